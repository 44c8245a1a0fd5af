"""``--kernels auto``: time each layer's two kernels once per machine, and run the faster.

A decision is keyed by what decides the speed (the layer's kind and shape, its input's size, the
batch, the density to 1/1000 and the thread count) and stored in one JSON file per machine (its
CPU, core count and the torch and numba versions), so the timing is paid once and every later
command reads it (it is plain JSON: each key says what was timed, each entry the two times).  The
timings are interleaved (dense, sparse, dense, ...) and the median of each counts, so other work on
the machine slows both alike.

The whole network's verdict is cached only when it can be trusted: its repeats must agree (every
round on the same side of the margin as the medians) and the machine must not have been busy
(``--dry-run``'s load check).  Otherwise the verdict serves this command alone, said in one line, and
is timed again next time: a timing taken while another job held the cores once stored a 21x speed-up.

Only inference asks the tuner: training's choice is explicit (``--kernels sparse`` or dense), since
the two kernels round differently in the last bits and a run must not depend on a timing.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch

from ddpm_lottery.kernels.layers import sparse_layers
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import write_json
from ddpm_lottery.utils.launch import machine_load

DEFAULT_CACHE = Path("~/.cache/ddpm-lottery/kernels")
# raised whenever a kernel changes speed: the timings of the earlier kernels are then stale, and re-taken
KERNELS_REVISION = 3  # 2: Linear over tiles of token rows; 3: conv backward in one pass an image, faster stride-2 split
NETWORK_MARGIN = 0.95  # a network keeps its layers' sparse choices only if they make it 5 % faster or more


def machine_key() -> str:
    """The CPU model, its core count, the library versions and the kernels' revision: what makes timings
    comparable."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        numba_version = version("numba")
    except Exception:  # numba missing: the tuner is never asked, but the key must still be computable
        numba_version = "none"
    return (
        f"{model} | {os.cpu_count()} cores | torch {torch.__version__} | numba {numba_version} | "
        f"kernels {KERNELS_REVISION}"
    )


def layer_key(layer, x: torch.Tensor) -> str:
    threads = torch.get_num_threads()
    if isinstance(layer, torch.nn.Conv2d):
        shape = (
            f"Conv2d {layer.in_channels}->{layer.out_channels} {layer.kernel_size[0]}x{layer.kernel_size[1]} "
            f"stride {layer.stride[0]} pad {layer.padding[0]} input {x.shape[-2]}x{x.shape[-1]} batch {x.shape[0]}"
        )
    else:
        shape = f"Linear {layer.in_features}->{layer.out_features} rows {x.numel() // x.shape[-1]}"
    return f"{shape} density {layer.density():.3f} threads {threads}"


def _check_cache_folder(folder: Path, given: bool) -> None:
    """The cache must be a folder, or a path to one that can be made: a regular file on it is the user's to
    move, named with the flag that chose it."""
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is None:
        return
    if given:
        raise UserError(f"--kernel-cache {folder}: {blocking} is a regular file, not a folder; give a folder")
    raise UserError(
        f"the kernel timings' folder {folder}: {blocking} is a regular file, not a folder; move it, or give "
        "--kernel-cache DIR"
    )


class KernelTuner:
    """Chooses each layer's kernel by timing both once, and remembers the choice on disk."""

    def __init__(self, cache_dir: str | Path | None = None, *, repeats: int = 5, log=None, clock=time.perf_counter):
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE).expanduser()
        _check_cache_folder(self.cache_dir, given=cache_dir is not None)
        self.machine = machine_key()
        self.path = self.cache_dir / f"kernels-{hashlib.sha256(self.machine.encode()).hexdigest()[:12]}.json"
        self.repeats = repeats
        self.log = log
        self.clock = clock  # what times a call (tests give a fake one)
        self.uncached: dict[str, dict] = {}  # verdicts this process trusts for itself only, never stored
        self.tuning_seconds = 0.0  # spent timing layers in this process (not counted in any figure it times)
        self.tuned = 0
        self.entries = self._read()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            if self.log:
                self.log(f"the kernel timings in {self.path} are unreadable; timing the layers again")
            return {}
        if (
            not isinstance(data, dict)
            or data.get("machine") != self.machine
            or not isinstance(data.get("layers"), dict)
        ):
            return {}
        # a malformed entry is a missing entry: timed again, never a reason to fail the command; so is a network
        # verdict stored before its repeats were checked for agreement
        return {
            key: entry
            for key, entry in data["layers"].items()
            if isinstance(entry, dict)
            and entry.get("kernel") in ("dense", "sparse", "auto")
            and (not key.startswith("network ") or entry.get("agreed") is True)
        }

    def _save(self) -> None:
        try:
            write_json(self.path, {"machine": self.machine, "layers": self.entries})
        except UserError as exc:  # a full or read-only disk costs a re-timing next time, not the command
            if self.log:
                self.log(f"the kernel timings were not stored ({exc}); they are timed again next time")

    def _interleaved(self, run, modes: tuple[str, str]) -> dict[str, list[float]]:
        """Seconds of ``run(mode)`` for each mode, ``repeats`` rounds of one call each, after an untimed round
        (the first sparse call compiles or loads the JIT; a compiled network's first call compiles)."""
        for mode in modes:
            run(mode)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(self.repeats):
            for mode in modes:
                started = self.clock()
                run(mode)
                times[mode].append(self.clock() - started)
        return times

    @torch.no_grad()
    def _time(self, layer, x: torch.Tensor) -> dict:
        times = self._interleaved(lambda kernel: layer.forward_with(x, kernel), ("dense", "sparse"))
        dense, sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
        return {
            "kernel": "sparse" if sparse < dense else "dense",
            "dense_ms": dense * 1e3,
            "sparse_ms": sparse * 1e3,
            "speedup": dense / sparse,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def choose(self, layer, x: torch.Tensor) -> str:
        key = layer_key(layer, x)
        entry = self.entries.get(key)
        if entry is None or entry.get("kernel") not in ("dense", "sparse"):
            started = time.perf_counter()
            entry = self.entries[key] = self._time(layer, x)
            self.tuning_seconds += time.perf_counter() - started
            self.tuned += 1
            self._save()
        return entry["kernel"]

    @torch.no_grad()
    def verify_network(
        self, model: torch.nn.Module, args: tuple, kwargs: dict, report, call=None, compiled: bool = False
    ) -> str:
        """The whole network's check after its layers' choices: "auto" if they make it faster, else "dense".

        Each layer is timed alone; a whole call also pays what one kernel leaves to the next (caches, the
        thread pools' hand-over), so the network is timed too, interleaved with the plain network (its own
        modules, put back by ``report``), and runs plain unless the choices win.  Stored like a layer's.

        ``call``: what runs the network (default: its forward past the hooks); ``compiled``: it is a
        ``torch.compile`` of it, so both sides are timed compiled (the warm-up round pays the compiles), and
        the verdict is stored apart from the eager one."""
        layers = sparse_layers(model)
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        if not layers:
            return "dense"
        choices = "|".join(sorted(key for _, layer in layers for key in layer.signature_keys()))
        key = (
            f"network {type(model).__name__}{' compiled' if compiled else ''} input {shapes} threads "
            f"{torch.get_num_threads()} layers {hashlib.sha256(choices.encode()).hexdigest()[:12]}"
        )
        entry = self.entries.get(key) or self.uncached.get(key)
        if entry is None or entry.get("kernel") not in ("dense", "auto"):
            started = time.perf_counter()
            machine = machine_load()  # before this timing adds its own
            call = call or model.forward  # past the hooks: this is the check itself

            def run(mode: str) -> None:
                report.run_plain(mode == "dense")
                call(*args, **kwargs)

            token = _TIMING.set(True)
            try:
                times = self._interleaved(run, ("dense", "auto"))
            finally:
                _TIMING.reset(token)
            entry = network_verdict(times["dense"], times["auto"])
            self.tuning_seconds += time.perf_counter() - started
            busy = machine.busy(torch.get_num_threads())
            if entry["agreed"] and not busy:
                self.entries[key] = entry
                self._save()
            else:
                self.uncached[key] = entry
                if self.log:
                    why = (
                        f"the machine was busy while timing ({machine.describe(torch.get_num_threads())})"
                        if busy
                        else f"its {self.repeats} timings disagree (speed-up {entry['spread'][0]:.2f}x to "
                        f"{entry['spread'][1]:.2f}x)"
                    )
                    self.log(
                        f"--kernels auto: the network's kernel choice ({entry['kernel']}, {entry['speedup']:.2f}x) "
                        f"holds for this command only: {why}; it is timed again next time"
                    )
        return entry["kernel"]

    def table(self) -> list[dict]:
        return [{"layer": key, **entry} for key, entry in sorted(self.entries.items())]


#: Set while the tuner runs a network only to time it: a wrapper that counts its calls (a stage schedule's
#: per-stage calls and seconds) leaves these out, since they are not the command's own work.
_TIMING: contextvars.ContextVar[bool] = contextvars.ContextVar("ddpm_lottery_kernel_timing", default=False)


def timing_calls() -> bool:
    """Whether the network is being called only to time the kernels (:meth:`KernelTuner.verify_network`)."""
    return _TIMING.get()


def network_verdict(dense: list[float], auto: list[float]) -> dict:
    """The whole network's verdict from its interleaved rounds: the medians decide ("auto": the layers'
    choices, when they beat the plain network by the margin, since a few per cent of noise on an idle
    machine must not turn into a slower network), and the repeats agree when every round's own speed-up
    falls on the same side of the margin as the medians'."""
    dense_s, auto_s = statistics.median(dense), statistics.median(auto)
    kernel = "auto" if auto_s < NETWORK_MARGIN * dense_s else "dense"
    rounds = [d / a for d, a in zip(dense, auto, strict=True)]
    agreed = all((ratio > 1 / NETWORK_MARGIN) == (kernel == "auto") for ratio in rounds)
    return {
        "kernel": kernel,
        "dense_ms": dense_s * 1e3,
        "sparse_ms": auto_s * 1e3,
        "speedup": dense_s / auto_s,
        "spread": [min(rounds), max(rounds)],
        "agreed": agreed,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
