"""What a ticket search pays a step: ``Trainer.train_step`` on the studies' own tickets, dense against sparse kernels.

    python benchmarks/ticket_step.py [--presets tiny,tiny@32:64:64] [--densities 0.5,0.25,0.125,0.0625,0.03125]
                                     [--repeats 5] [--threads 1] [--clock wall|thread] [--split]
                                     [--run RUN --levels 7,8,9] [--compile] [--ops N]

Two trainers per ticket, built as a search builds a pruned level's (the run's own config, ``use_masks`` with
the ticket's masks, the ticket's weights loaded), one with ``--kernels dense`` and one with ``--kernels sparse``
(``sparse_training_from = 0``); their steps (the whole of it: the step's draws, forward, loss, backward, the
mask hook, clipping, Adam, the EMA) are timed interleaved, on random images of the run's input shape.

* FLOP ratio: 1 / density, the limit of a kernel as efficient as the dense one;
* Amdahl bound: the step's speed-up if its convolutions and Linear layers (forward and backward) ran at their
  FLOP ratio and the rest of the step stayed as it is, from a ``torch.profiler`` profile of the dense step.

``--ops N`` also lists the N operators the sparse step spends most in (``torch.profiler``'s self time, per step:
the sparse layers show as ``_EagerLinear``/``_EagerConv`` and their backward), which names what the rest is.
``--split`` also profiles each sparse step and prints where its time goes (the Amdahl bound of the network
goal): the sparse layers' kernels, the value gather and structure check, the rest of the network, the
optimizer, clipping, EMA and mask hook.  At 1 thread, ``--clock thread`` is the figure a shared machine
keeps.  The tickets are those of ``benchmarks/kernels.py`` (``STUDY_TICKETS``), random masks elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
from pathlib import Path

import torch
from common import CLOCKS, cpu_description, interleaved_minima
from kernels import STUDY_TICKETS, networks_for

from ddpm_lottery.config import LotteryConfig
from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.trainer import Trainer

DENSE_LAYER_OPS = (  # what a dense step spends in its convolutions and Linear layers, forward and backward
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::thnn_conv2d",
    "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward",
    "aten::addmm",
    "aten::mm",
    "aten::bmm",
)
KERNEL_FUNCTIONS = ("conv_forward", "conv_backward", "linear_forward", "linear_input_grad", "linear_weight_grad")


def run_config(spec: str, run: str | Path | None = None) -> LotteryConfig:
    """The run's config (its training settings): ``run``'s, or the study run of ``spec``, else the preset's
    defaults; on the CPU, every pruned level with the kernels it is given."""
    run = run or STUDY_TICKETS.get(spec, (None,))[0]
    if run is not None and (Path(run) / "config.json").is_file():
        config = copy.deepcopy(Run.open(run).config)
    else:
        preset, _, widths = spec.partition("@")
        config = LotteryConfig()
        config.model.preset = preset
        if widths:
            config.model.block_out_channels = tuple(int(c) for c in widths.split(":"))
    config.runtime.device = "cpu"
    config.runtime.sparse_training_from = 0.0
    return config


def ticket_trainer(
    config, ticket: torch.nn.Module, masks, kernels: str, workdir: str, compiled: bool = False
) -> Trainer:
    size, channels = ticket.config.sample_size, ticket.config.in_channels
    data = torch.randint(
        0, 256, (512, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    config = copy.deepcopy(config)
    config.runtime.kernels = kernels
    config.train.compile = compiled  # --compile: the step's forward through torch.compile (not hashed)
    trainer = Trainer(
        config,
        Run(workdir, {}).level(1),
        images=ImageSet(data, None, "random", "benchmark", False),
        progress=False,
        log=lambda *_: None,
    )
    trainer.use_masks(masks)  # as a search's pruned level: the masks, then theta * m
    trainer.load_weights({n: p.detach() * masks.get(n, 1) for n, p in ticket.named_parameters()})
    return trainer


def stepper(trainer: Trainer):
    counter = iter(range(10**9))
    return lambda: trainer.train_step(next(counter))


def profile_steps(step, steps: int = 3) -> dict[str, float]:
    """Self CPU microseconds of ``steps`` steps, by operator name (torch.profiler: wall time, so a few steps)."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(steps):
            step()
    return {event.key: event.self_cpu_time_total for event in prof.key_averages()}


def costliest_operators(step, count: int, steps: int = 3) -> list[tuple[str, float]]:
    """The ``count`` operators with the most self time, in seconds per step (a profile of ``steps`` steps)."""
    events = profile_steps(step, steps)
    ranked = sorted(events.items(), key=lambda item: -item[1])[:count]
    return [(name, microseconds / 1e6 / steps) for name, microseconds in ranked]


def dense_layer_share(step) -> float:
    events = profile_steps(step)
    return sum(events.get(op, 0.0) for op in DENSE_LAYER_OPS) / sum(events.values())


@contextlib.contextmanager
def timed_parts(trainer: Trainer, clock):
    """Wrap the step's parts in timers of ``clock``; yields the seconds each part took (summed over calls)."""
    from ddpm_lottery.kernels import ops
    from ddpm_lottery.kernels.layers import _SparseMixin

    spent: dict[str, float] = {}
    targets = [(ops, name, "sparse layer kernels") for name in KERNEL_FUNCTIONS]
    targets += [
        (_SparseMixin, "_values", "value gather (forward)"),
        (_SparseMixin, "_check_structure", "structure check (check_weights)"),
        (trainer.optimizer, "step", "Adam"),
        (trainer.ema, "step", "EMA"),
        (trainer.hooks, "after_backward", "mask hook (gradients)"),
        (trainer.hooks, "after_optimizer_step", "mask hook (weights)"),
        (torch.nn.utils, "clip_grad_norm_", "gradient clipping"),
        (trainer, "batch", "the step's draws (batch, noise)"),
    ]
    saved = []
    for owner, name, part in targets:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        if original is None:
            continue
        spent[part] = 0.0

        def timed(*args, _call=original, _part=part, **kwargs):
            begun = clock()
            try:
                return _call(*args, **kwargs)
            finally:
                spent[_part] += clock() - begun

        saved.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, timed)
    try:
        yield spent
    finally:
        for owner, name, original, own in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def split(trainer: Trainer, step, repeats: int, clock: str) -> tuple[float, dict[str, float]]:
    """The step's seconds and each part's, the best of ``repeats`` steps (each part's own best)."""
    read = CLOCKS[clock]
    best: dict[str, float] = {}
    whole = float("inf")
    for _ in range(repeats):
        with timed_parts(trainer, read) as spent:
            begun = read()
            step()
            total = read() - begun
        whole = min(whole, total)
        spent["the rest: norms, SiLU, attention, loss, autograd"] = total - sum(spent.values())
        for part, seconds in spent.items():
            best[part] = min(best.get(part, float("inf")), seconds)
    return whole, best


def run_tickets(path: str, levels):
    """(label, network, masks) of a run's levels, as :func:`kernels.networks_for` gives the studies' tickets."""
    from ddpm_lottery.lottery.networks import level_network

    run = Run.open(path)
    for index in levels:
        ticket = level_network(run.level(index), "ema")
        masks = {
            f"{n}.weight": m.weight != 0
            for n, m in ticket.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        }
        yield f"{Path(path).name}, level {index}", ticket, masks


def bench(
    presets,
    densities,
    repeats: int,
    clock: str,
    show_split: bool,
    run=None,
    levels=(),
    compiled: bool = False,
    operators: int = 0,
) -> list[str]:
    rows = [
        "| network | ticket | sparsity | dense-kernel step ms | sparse-kernel step ms | × | FLOP ratio | Amdahl bound |"
        + (" compiled: dense ms | sparse ms | × compiled dense | × eager dense |" if compiled else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if compiled else ""),
    ]
    print(*rows, sep="\n", flush=True)
    splits, profiles = [], []
    for spec in presets if run is None else [run]:
        config = run_config(spec, run)
        tickets = networks_for(spec, densities) if run is None else run_tickets(run, levels)
        for label, ticket, masks in tickets:
            density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
            with tempfile.TemporaryDirectory() as workdir:
                sparse_trainer = ticket_trainer(config, ticket, masks, "sparse", f"{workdir}/sparse")
                dense = stepper(ticket_trainer(config, ticket, masks, "dense", f"{workdir}/dense"))
                sparse = stepper(sparse_trainer)
                calls = [dense, sparse]
                if compiled:  # the same two, their forward through torch.compile; warmed up before timing
                    calls += [
                        stepper(ticket_trainer(config, ticket, masks, kernels, f"{workdir}/{kernels}-c", True))
                        for kernels in ("dense", "sparse")
                    ]
                times = interleaved_minima(calls, repeats, clock)
                t_dense, t_sparse = times[:2]
                share = dense_layer_share(dense)
                if show_split:
                    splits.append((spec, 1 - density, *split(sparse_trainer, sparse, repeats, clock)))
                if operators:
                    profiles.append((spec, 1 - density, costliest_operators(sparse, operators)))
            amdahl = 1 / ((1 - share) + share * density)
            rows.append(
                f"| {spec} | {label} | {1 - density:.2%} | {t_dense * 1e3:.0f} | {t_sparse * 1e3:.0f} | "
                f"{t_dense / t_sparse:.2f}× | {1 / density:.1f}× | {amdahl:.2f}× (layers {share:.0%} of the step) |"
                + (
                    f" {times[2] * 1e3:.0f} | {times[3] * 1e3:.0f} | {times[2] / times[3]:.2f}× | "
                    f"{t_dense / times[3]:.2f}× |"
                    if compiled
                    else ""
                )
            )
            print(rows[-1], flush=True)
    for spec, sparsity, whole, parts in splits:
        print(f"\nsparse-kernel step of {spec} at {sparsity:.2%}: {whole * 1e3:.1f} ms, each part's best of {repeats}:")
        for name, seconds in parts.items():
            print(f"  {name:<52} {seconds * 1e3:7.1f} ms {seconds / whole:6.1%}")
    for spec, sparsity, ranked in profiles:
        print(f"\nthe costliest operators of the sparse-kernel step of {spec} at {sparsity:.2%} (self time a step):")
        for name, seconds in ranked:
            print(f"  {name[:60]:<60} {seconds * 1e3:7.1f} ms")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,tiny@32:64:64")
    parser.add_argument("--densities", default="0.5,0.25,0.125,0.0625,0.03125")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch (and numba) threads [default: torch's]")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall", help="thread: 1 thread only")
    parser.add_argument("--split", action="store_true", help="also profile each sparse step by part")
    parser.add_argument("--ops", type=int, default=0, help="also list the sparse step's N costliest operators")
    parser.add_argument("--run", default=None, help="time this run's --levels instead of the presets' tickets")
    parser.add_argument("--levels", default="", help="with --run: its levels, e.g. 7,8,9")
    parser.add_argument(
        "--compile", action="store_true", help="also time both steps with --compile (torch.compile of the forward)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# Trainer.train_step, dense against sparse kernels: {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {os.cpu_count()} cores, {cpu_description()}; best of {args.repeats} interleaved "
        f"steps, {args.clock} clock\n",
        flush=True,
    )
    bench(
        args.presets.split(","),
        [float(d) for d in args.densities.split(",")],
        args.repeats,
        args.clock,
        args.split,
        args.run,
        [int(level) for level in args.levels.split(",") if level],
        args.compile,
        args.ops,
    )


if __name__ == "__main__":
    main()
