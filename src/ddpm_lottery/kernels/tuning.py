"""``--kernels auto``: time each layer's two kernels once per machine, and run the faster.

A decision is keyed by what decides the speed (the layer's kind and shape, its input's size, the
batch, the density to 1/1000 and the thread count) and stored in one JSON file per machine (its
CPU, core count and the torch and numba versions), so the timing is paid once and every later
command reads it.  ``ddpm-lottery kernels`` prints the file.  The timings are interleaved (dense,
sparse, dense, ...) and the median of each counts, so other work on the machine slows both alike.

Only inference asks the tuner: training's choice is explicit (``--kernels sparse`` or dense), since
the two kernels round differently in the last bits and a run must not depend on a timing.
"""

from __future__ import annotations

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

DEFAULT_CACHE = Path("~/.cache/ddpm-lottery/kernels")
# raised whenever a kernel changes speed: the timings of the earlier kernels are then stale, and re-taken
KERNELS_REVISION = 2  # 2: Linear over tiles of token rows
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


class KernelTuner:
    """Chooses each layer's kernel by timing both once, and remembers the choice on disk."""

    def __init__(self, cache_dir: str | Path | None = None, *, repeats: int = 5, log=None):
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE).expanduser()
        self.machine = machine_key()
        self.path = self.cache_dir / f"kernels-{hashlib.sha256(self.machine.encode()).hexdigest()[:12]}.json"
        self.repeats = repeats
        self.log = log
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
        return data["layers"]

    def _save(self) -> None:
        try:
            write_json(self.path, {"machine": self.machine, "layers": self.entries})
        except UserError as exc:  # a full or read-only disk costs a re-timing next time, not the command
            if self.log:
                self.log(f"the kernel timings were not stored ({exc}); they are timed again next time")

    @torch.no_grad()
    def _time(self, layer, x: torch.Tensor) -> dict:
        for kernel in ("dense", "sparse"):  # the first sparse call compiles or loads the JIT: not timed
            layer.forward_with(x, kernel)
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for _ in range(self.repeats):
            for kernel in ("dense", "sparse"):
                started = time.perf_counter()
                layer.forward_with(x, kernel)
                times[kernel].append(time.perf_counter() - started)
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
        entry = self.entries.get(key)
        if entry is None or entry.get("kernel") not in ("dense", "auto"):
            started = time.perf_counter()
            times: dict[str, list[float]] = {"dense": [], "auto": []}
            call = call or model.forward  # past the hooks: this is the check itself
            for round_index in range(self.repeats + 1):
                for mode in ("dense", "auto"):
                    report.run_plain(mode == "dense")
                    begun = time.perf_counter()
                    call(*args, **kwargs)
                    if round_index:  # the first round warms both up
                        times[mode].append(time.perf_counter() - begun)
            # the best of each: the least disturbed call.  The layers' choices must win by a margin, since the
            # timing's noise (a few per cent on an idle machine) must not turn into a slower network
            dense, auto = min(times["dense"]), min(times["auto"])
            entry = self.entries[key] = {
                "kernel": "auto" if auto < NETWORK_MARGIN * dense else "dense",
                "dense_ms": dense * 1e3,
                "sparse_ms": auto * 1e3,
                "speedup": dense / auto,
                "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            self.tuning_seconds += time.perf_counter() - started
            self._save()
        return entry["kernel"]

    def table(self) -> list[dict]:
        return [{"layer": key, **entry} for key, entry in sorted(self.entries.items())]
