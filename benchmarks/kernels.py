"""The sparse kernels against PyTorch's dense ones: per layer, per denoiser call, per training step.

    python benchmarks/kernels.py [--sections layers,networks,compiled,training,setup] [--presets tiny,small,ddpm-cifar10]
                                 [--densities 0.5,0.25,0.125,0.0625,0.03] [--batches 1,64] [--repeats 5]
                                 [--threads N] [--clock wall|thread]

Every ratio is dense time / sparse time of the same inputs, timed interleaved in this one process
(alternating which goes first, after two warm-up calls each; the best of ``--repeats`` counts), at
``torch.get_num_threads()`` threads.  Beside each ratio stand its limits:

* FLOP ratio: the dense layer's (or network's) FLOPs over the sparse kernel's, i.e. 1 / density: what a
  kernel as efficient as the dense one would reach;
* Amdahl bound (networks): the speed-up if every convolution and Linear ran at its FLOP ratio and the
  rest of the call (normalisation, activations, attention, copies) stayed as it is, from a
  ``torch.profiler`` profile of the dense call.

The `tiny` rows at 50 / 75 / 87.5 / 93.75 % use the reproduction study's own tickets
(``results/cpu-digits/runs/unified-seed0``, levels 1-4), and the width study's 2x network
(``tiny@32:64:64``) its own at 50 to 96.9 % (``results/cpu-widths/runs/unified-2x-seed0``, levels 1-5), when
those folders are there; every other row uses random masks with the same sparsity in every layer.  The
training section on those tickets is the issue's network table:
``--sections training --presets tiny,tiny@32:64:64 --densities 0.125,0.0625,0.03125``.  Nothing here is asserted by a test: run it on an idle
machine (no tests, no study beside it), or at ``--threads 1 --clock thread`` (the calling thread's CPU time,
which a shared machine's other work barely moves).  What a search pays a step, the whole ``Trainer.train_step``
with its masks, is ``benchmarks/ticket_step.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_description, interleaved_minima, interleaved_minimum

from ddpm_lottery.config import ModelConfig, RuntimeConfig
from ddpm_lottery.kernels.install import install_kernels
from ddpm_lottery.kernels.layers import kernels_used, use_kernels
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.models.families import denoise
from ddpm_lottery.models.networks import build_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
# the studies' own tickets, where a network spec has them: the search's run and its level at each density
STUDY_TICKETS = {
    "tiny": (RESULTS / "cpu-digits" / "runs" / "unified-seed0", {0.5: 1, 0.25: 2, 0.125: 3, 0.0625: 4}),
    "tiny@32:64:64": (
        RESULTS / "cpu-widths" / "runs" / "unified-2x-seed0",
        {0.5: 1, 0.25: 2, 0.125: 3, 0.0625: 4, 0.03125: 5},
    ),
}
LAYERS = [  # (what, module, input shape without the batch)
    ("conv 3x3 16 ch 28x28", lambda: torch.nn.Conv2d(16, 16, 3, padding=1), (16, 28, 28)),
    ("conv 3x3 32 ch 14x14", lambda: torch.nn.Conv2d(32, 32, 3, padding=1), (32, 14, 14)),
    ("conv 3x3 64 ch 28x28", lambda: torch.nn.Conv2d(64, 64, 3, padding=1), (64, 28, 28)),
    ("conv 3x3 128 ch 32x32", lambda: torch.nn.Conv2d(128, 128, 3, padding=1), (128, 32, 32)),
    ("conv 3x3 256 ch 16x16", lambda: torch.nn.Conv2d(256, 256, 3, padding=1), (256, 16, 16)),
    ("conv 3x3 stride 2 128 ch 32x32", lambda: torch.nn.Conv2d(128, 128, 3, stride=2, padding=1), (128, 32, 32)),
    ("conv 1x1 256->128 16x16", lambda: torch.nn.Conv2d(256, 128, 1), (128 * 2, 16, 16)),
    ("linear 512->512 (time embedding)", lambda: torch.nn.Linear(512, 512), (512,)),
    ("linear 256->256 (attention, 8x8 tokens)", lambda: torch.nn.Linear(256, 256), (64, 256)),
]


def random_masks(model: torch.nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            keep = torch.rand(module.weight.shape, generator=generator) < density
            with torch.no_grad():
                module.weight.mul_(keep)
            masks[f"{name}.weight"] = keep
    return masks


def layer_flops(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> float:
    """Dense multiply-adds x 2 of one call."""
    if isinstance(module, torch.nn.Conv2d):
        return 2.0 * out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    return 2.0 * out.numel() * module.in_features


def bench_layers(densities, batches, repeats, clock: str = "wall") -> list[str]:
    rows = [
        "| layer | batch | density | dense ms | sparse ms | × | FLOP ratio (limit) | dense GFLOP/s | "
        "sparse GFLOP/s (useful) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(*rows, sep="\n", flush=True)
    for what, make, shape in LAYERS:
        for batch in batches:
            for density in densities:
                torch.manual_seed(0)
                dense = make()
                x = torch.randn(batch, *shape)
                keep = random_masks(torch.nn.Sequential(dense), density)["0.weight"]
                sparse = torch.nn.Sequential(copy.deepcopy(dense))
                use_kernels(sparse, "sparse", masks={"0.weight": keep})
                with torch.no_grad():
                    out = dense(x)
                    t_dense, t_sparse = interleaved_minimum(lambda: dense(x), lambda: sparse(x), repeats, clock)
                flops = layer_flops(dense, x, out)
                real_density = float(keep.float().mean())
                rows.append(
                    f"| {what} | {batch} | {real_density:.2%} | {t_dense * 1e3:.2f} | {t_sparse * 1e3:.2f} | "
                    f"{t_dense / t_sparse:.2f}× | {1 / real_density:.1f}× | {flops / t_dense / 1e9:.0f} | "
                    f"{flops * real_density / t_sparse / 1e9:.1f} |"
                )
                print(rows[-1], flush=True)
    return rows


def network_input(model: torch.nn.Module, batch: int):
    size = model.config.sample_size
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, model.config.in_channels, size, size, generator=generator),
        torch.randint(0, 1000, (batch,), generator=generator),
    )


def prunable_share(model: torch.nn.Module, batch: int) -> float:
    """The share of a dense denoiser call spent in convolutions and Linear layers (torch.profiler, self CPU)."""
    from torch.profiler import profile

    x, t = network_input(model, batch)
    with torch.no_grad():
        denoise(model, x, t)
        with profile() as prof:
            denoise(model, x, t)
    total = layers = 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        if event.key in (
            "aten::mkldnn_convolution",
            "aten::convolution_overrideable",
            "aten::thnn_conv2d",
            "aten::_slow_conv2d_forward",
            "aten::addmm",
            "aten::mm",
            "aten::linear",
        ):
            layers += event.self_cpu_time_total
    return layers / total


def study_ticket(spec: str, density: float):
    """The study's own ticket of network ``spec`` at ``density`` (EMA weights) and its level, or None if absent."""
    run, levels = STUDY_TICKETS.get(spec, (None, {}))
    if density not in levels or not (run / f"level_{levels[density]:02d}").is_dir():
        return None, None
    from ddpm_lottery.runs.run import Run

    return level_network(Run.open(run).level(levels[density]), "ema"), f"{run.parent.parent.name} {run.name}"


def network(spec: str) -> torch.nn.Module:
    """A preset's network; ``PRESET@C1:C2:C3`` overrides its channels per level (e.g. ``tiny@32:64:64``, the
    width study's 2x network)."""
    preset, _, widths = spec.partition("@")
    config = ModelConfig(preset=preset)
    if widths:
        config.block_out_channels = tuple(int(c) for c in widths.split(":"))
    return build_model(config, 3 if preset == "ddpm-cifar10" else 1).eval()


def networks_for(preset: str, densities):
    """(label, network, masks) per density: the studies' own tickets where STUDY_TICKETS has them."""
    base = network(preset)
    for density in densities:
        ticket, source = study_ticket(preset, density)
        if ticket is not None:
            masks = {
                f"{n}.weight": m.weight != 0
                for n, m in ticket.named_modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            }
            label = f"study ticket ({source}, level {STUDY_TICKETS[preset][1][density]})"
            yield label, ticket, masks
        else:
            model = copy.deepcopy(base)
            yield "random masks", model, random_masks(model, density)


def bench_networks(presets, densities, batches, repeats, clock: str = "wall") -> list[str]:
    rows = [
        "| network | masks | batch | sparsity | dense ms | sparse ms | × | auto ms | auto × | FLOP ratio | "
        "Amdahl bound | layers sparse under auto |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(*rows, sep="\n", flush=True)
    for preset in presets:
        for batch in batches:
            share = prunable_share(network(preset), batch)
            for label, dense, masks in networks_for(preset, densities):
                kept = sum(int(m.sum()) for m in masks.values())
                total = sum(m.numel() for m in masks.values())
                density = kept / total
                sparse = copy.deepcopy(dense)
                use_kernels(sparse, "sparse", masks=masks)
                auto = copy.deepcopy(dense)
                with tempfile.TemporaryDirectory() as cache:
                    runtime = RuntimeConfig()
                    runtime.kernels, runtime.kernel_cache = "auto", cache
                    # what every command does: each layer timed, then the whole network against the plain one
                    install_kernels(auto, runtime, log=lambda *_: None)
                    x, t = network_input(dense, batch)
                    with torch.no_grad():
                        denoise(auto, x, t)  # the tuning call: every layer, then the network
                        t_dense, t_sparse = interleaved_minimum(
                            lambda: denoise(dense, x, t), lambda: denoise(sparse, x, t), repeats, clock
                        )
                        _, t_auto = interleaved_minimum(
                            lambda: denoise(dense, x, t), lambda: denoise(auto, x, t), max(2, repeats // 2), clock
                        )
                used = kernels_used(auto)
                amdahl = 1 / ((1 - share) + share * density)
                rows.append(
                    f"| {preset} | {label} | {batch} | {1 - density:.2%} | {t_dense * 1e3:.1f} | "
                    f"{t_sparse * 1e3:.1f} | {t_dense / t_sparse:.2f}× | {t_auto * 1e3:.1f} | "
                    f"{t_dense / t_auto:.2f}× | {1 / density:.1f}× | {amdahl:.2f}× "
                    f"(layers {share:.0%} of the call) | {used.get('sparse', 0)} of {sum(used.values())} |"
                )
                print(rows[-1], flush=True)
    return rows


def bench_compiled(presets, densities, batches, repeats, clock: str = "wall") -> list[str]:
    """The rest of the call: the same networks eager and through --compile-sampling (torch.compile), every
    ratio to the dense network run eagerly.  The compile, paid once per shape, is reported apart."""
    rows = [
        "| network | masks | batch | sparsity | dense ms | dense compiled | sparse | sparse compiled | "
        "auto compiled | sparse compiled / dense compiled | compile s (dense, sparse) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(*rows, sep="\n", flush=True)
    for preset in presets:
        for batch in batches:
            for label, dense, masks in networks_for(preset, densities):
                density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
                x, t = network_input(dense, batch)
                models, reports = {}, {}
                with tempfile.TemporaryDirectory() as cache:
                    for name, kernels, compiled in (
                        ("dense", "dense", False),
                        ("dense compiled", "dense", True),
                        ("sparse", "sparse", False),
                        ("sparse compiled", "sparse", True),
                        ("auto compiled", "auto", True),
                    ):
                        model = copy.deepcopy(dense)
                        runtime = RuntimeConfig()
                        runtime.kernels, runtime.kernel_cache, runtime.compile_sampling = kernels, cache, compiled
                        reports[name] = install_kernels(
                            model, runtime, log=lambda *_: None, masks=None if kernels == "auto" else masks
                        )
                        with torch.no_grad():
                            denoise(model, x, t)  # each shape's first call: eager (structures, auto's timing)
                            denoise(model, x, t)  # the compiled call: pays the compile
                        models[name] = model
                    with torch.no_grad():
                        calls = [lambda m=m: denoise(m, x, t) for m in models.values()]
                        best = dict(zip(models, interleaved_minima(calls, repeats, clock)))
                base = best["dense"]
                cells = " | ".join(
                    f"{best[name] * 1e3:.1f} ({base / best[name]:.2f}×)"
                    for name in ("dense compiled", "sparse", "sparse compiled", "auto compiled")
                )
                rows.append(
                    f"| {preset} | {label} | {batch} | {1 - density:.2%} | {base * 1e3:.1f} | {cells} | "
                    f"{best['dense compiled'] / best['sparse compiled']:.2f}× | "
                    f"{reports['dense compiled'].compile_seconds:.0f}, "
                    f"{reports['sparse compiled'].compile_seconds:.0f} |"
                )
                print(rows[-1], flush=True)
    return rows


def bench_training(presets, densities, batch, repeats, clock: str = "wall") -> list[str]:
    rows = [
        "| network | masks | batch | sparsity | dense step ms | sparse step ms | × | FLOP ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print(*rows, sep="\n", flush=True)
    for preset in presets:
        for label, dense, masks in networks_for(preset, densities):
            dense.train()
            sparse = copy.deepcopy(dense)
            use_kernels(sparse, "sparse", masks=masks)
            kept = sum(int(m.sum()) for m in masks.values())
            density = kept / sum(m.numel() for m in masks.values())
            x, t = network_input(dense, batch)
            steps = {}
            for name, model in (("dense", dense), ("sparse", sparse)):
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)

                def step(model=model, optimizer=optimizer):
                    optimizer.zero_grad(set_to_none=True)
                    denoise(model, x, t).square().mean().backward()
                    optimizer.step()

                steps[name] = step
            t_dense, t_sparse = interleaved_minimum(steps["dense"], steps["sparse"], repeats, clock)
            rows.append(
                f"| {preset} | {label} | {batch} | {1 - density:.2%} | {t_dense * 1e3:.0f} | "
                f"{t_sparse * 1e3:.0f} | {t_dense / t_sparse:.2f}× | {1 / density:.1f}× |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_setup() -> list[str]:
    """The one-off costs, apart from every steady-state figure: the JIT (cold: compiled into an empty cache;
    warm: loaded from numba's disk cache) and the timing of a network's layers for --kernels auto."""
    import subprocess
    import sys

    rows = ["| one-off cost | seconds |", "|---|---|"]
    print(*rows, sep="\n", flush=True)
    code = (
        "import sys, time; s=time.perf_counter(); from ddpm_lottery.kernels.layers import jit_unavailable; "
        "jit_unavailable(sys.argv[1] == 'training'); print(time.perf_counter()-s)"
    )
    for what in ("inference", "training"):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            run = [sys.executable, "-c", code, what]
            cold = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
            warm = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
        rows += [
            f"| JIT for {what}, cold (compiled into an empty cache) | {cold:.1f} |",
            f"| JIT for {what}, warm (loaded from the disk cache; includes importing numba) | {warm:.2f} |",
        ]
    from ddpm_lottery.kernels.tuning import KernelTuner

    for preset, batch in (("tiny", 64), ("ddpm-cifar10", 8)):
        model = network(preset)
        random_masks(model, 0.125)
        with tempfile.TemporaryDirectory() as cache:
            tuner = KernelTuner(cache, repeats=3)
            use_kernels(model, "auto", tuner=tuner)
            x, t = network_input(model, batch)
            with torch.no_grad():
                denoise(model, x, t)
        rows.append(
            f"| --kernels auto: timing every layer of {preset} at batch {batch} once ({tuner.tuned} "
            f"layer signatures) | {tuner.tuning_seconds:.1f} |"
        )
    print(*rows[2:], sep="\n", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="layers,networks,compiled,training,setup")
    parser.add_argument(
        "--presets",
        default="tiny,small,ddpm-cifar10",
        help="presets, each optionally with its channels per level: tiny@32:64:64",
    )
    parser.add_argument(
        "--densities", default="0.5,0.25,0.125,0.0625,0.03", help="surviving fractions (0.125 = 87.5 %% sparse)"
    )
    parser.add_argument("--layer-densities", default="0.125,0.05,0.03")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch (and numba) threads [default: torch's]")
    parser.add_argument(
        "--clock", choices=("wall", "thread"), default="wall", help="thread: the calling thread's CPU time (1 thread)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    presets = args.presets.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"# sparse kernels against dense: {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, {cpu_description()}; best of {args.repeats} interleaved calls, {args.clock} clock\n",
        flush=True,
    )
    started = time.perf_counter()
    if "setup" in sections:
        print("## One-off costs\n")
        bench_setup()
    if "layers" in sections:
        print("\n## Per layer\n")
        bench_layers([float(d) for d in args.layer_densities.split(",")], batches, args.repeats, args.clock)
    if "networks" in sections:
        print("\n## Per denoiser call\n")
        bench_networks(presets, densities, batches, args.repeats, args.clock)
    if "compiled" in sections:
        print("\n## The rest of the call: eager against --compile-sampling (ratios to dense eager)\n")
        bench_compiled(presets, densities, batches, args.repeats, args.clock)
    if "training" in sections:
        print(f"\n## Per training step (forward, backward, Adam; batch {args.train_batch})\n")
        bench_training(presets, densities, args.train_batch, max(3, args.repeats // 2), args.clock)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
