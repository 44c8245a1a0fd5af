"""ddpm-lottery's sparse kernels beside SparseProp, the peer for unstructured sparse training on CPUs.

    python benchmarks/peers.py [--densities 0.125,0.0625] [--batch 64] [--repeats 7] [--layers conv,linear]
                               [--threads N] [--clock wall|thread] [--build-peer]

SparseProp (Nikdan et al., ICML 2023; PyPI ``sparseprop``) is a C++ extension that pip builds from its
sdist with ``-march=native``; this script imports it when it is installed, builds it first with
``--build-peer`` when a C++ compiler is present (``pip install pybind11 scipy`` then
``pip install --no-build-isolation sparseprop``), and otherwise prints one line saying why its columns are
left out.  It is not a dependency of ddpm-lottery.

Every row gives both libraries the same layer, the same random mask and the same inputs.  SparseProp's
convolution has two loop orders (``vectorizing_over_on``); both are timed and its better one counts, as its
own ``sparsify_if_faster`` would choose.  The calls are timed interleaved in this one process (each repeat
in another rotation of the order, after two warm-up calls each; the best of ``--repeats`` counts), at
``torch.get_num_threads()`` threads, and every ratio is the dense PyTorch layer's time over the sparse one:

* forward: the call without autograd (sampling);
* forward + backward: the call and the gradients of its input and its surviving weights, as a training
  step needs them.

The FLOP ratio (1 / density) is the limit of a kernel as efficient as the dense one.  Nothing here is
asserted by a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys

import torch
from common import CLOCKS, cpu_description, interleaved_minima

from ddpm_lottery.kernels.layers import use_kernels

# the layers of the kernels issue's table (the study's U-Nets and ddpm-cifar10's), and a DiT's token Linear
# layers at batch 64 x 49 tokens; (what, kind, make, input shape without the batch)
LAYERS = [
    ("3×3 conv, 16 ch, 28×28", "conv", lambda: torch.nn.Conv2d(16, 16, 3, padding=1), (16, 28, 28)),
    ("3×3 conv, 32 ch, 14×14", "conv", lambda: torch.nn.Conv2d(32, 32, 3, padding=1), (32, 14, 14)),
    ("3×3 conv, 64 ch, 28×28", "conv", lambda: torch.nn.Conv2d(64, 64, 3, padding=1), (64, 28, 28)),
    ("3×3 conv, 128 ch, 32×32", "conv", lambda: torch.nn.Conv2d(128, 128, 3, padding=1), (128, 32, 32)),
    ("3×3 conv, 256 ch, 16×16", "conv", lambda: torch.nn.Conv2d(256, 256, 3, padding=1), (256, 16, 16)),
    (
        "3×3 conv, 128 ch, 32×32, stride 2",
        "conv",
        lambda: torch.nn.Conv2d(128, 128, 3, stride=2, padding=1),
        (128, 32, 32),
    ),
    ("Linear 96 → 384, 49 tokens", "linear", lambda: torch.nn.Linear(96, 384), (49, 96)),
    ("Linear 384 → 384, 49 tokens", "linear", lambda: torch.nn.Linear(384, 384), (49, 384)),
    ("Linear 384 → 1536, 49 tokens", "linear", lambda: torch.nn.Linear(384, 1536), (49, 384)),
    ("Linear 1536 → 384, 49 tokens", "linear", lambda: torch.nn.Linear(1536, 384), (49, 1536)),
]

BUILD_COMMANDS = (
    [sys.executable, "-m", "pip", "install", "pybind11", "scipy"],
    [sys.executable, "-m", "pip", "install", "--no-build-isolation", "sparseprop"],
)


def load_peer(build: bool):
    """SparseProp's modules, or None and the one-line reason its columns are left out."""
    try:
        import sparseprop.modules as peer

        return peer, None
    except ImportError:
        pass
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        return None, "SparseProp left out: it is not installed and no C++ compiler is here to build it from its sdist"
    if not build:
        return None, "SparseProp left out: not installed (--build-peer builds it from its sdist with " + compiler + ")"
    for command in BUILD_COMMANDS:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"SparseProp left out: `{' '.join(command[2:])}` failed: {last}"
    try:
        import sparseprop.modules as peer

        return peer, None
    except ImportError as error:
        return None, f"SparseProp left out: built but does not import ({error})"


def masked_layer(make, density: float):
    """A dense layer whose weight keeps a random ``density`` of its entries, and that mask."""
    torch.manual_seed(0)
    dense = make()
    keep = torch.rand(dense.weight.shape) < density
    with torch.no_grad():
        dense.weight.mul_(keep)
    return dense, keep


def peer_layers(peer, dense: torch.nn.Module, kind: str) -> list[torch.nn.Module]:
    """SparseProp's versions of ``dense``: both loop orders of a convolution, its one Linear."""
    if kind == "linear":
        return [peer.SparseLinear.from_dense(copy.deepcopy(dense))]
    return [peer.SparseConv2d.from_dense(copy.deepcopy(dense), vectorizing_over_on=v) for v in (False, True)]


def forward_call(layer, x):
    def call():
        with torch.no_grad():
            layer(x)

    return call


def training_call(layer, x, upstream):
    def call():
        layer.zero_grad(set_to_none=True)
        inputs = x.detach().requires_grad_()
        (layer(inputs) * upstream).sum().backward()

    return call


def ratios(dense, ours, peers, x, repeats: int, clock: str) -> dict[str, tuple[float, float | None]]:
    """Dense time over ours and over the peer's best, forward and forward + backward."""
    with torch.no_grad():
        upstream = torch.randn_like(dense(x))
    result = {}
    for name, make_call in (
        ("forward", forward_call),
        ("training", lambda layer, inputs: training_call(layer, inputs, upstream)),
    ):
        times = interleaved_minima([make_call(layer, x) for layer in [dense, ours, *peers]], repeats, clock)
        peer_ratio = times[0] / min(times[2:]) if peers else None
        result[name] = (times[0] / times[1], peer_ratio)
    return result


def bench(layers, densities, batch: int, repeats: int, peer, clock: str = "wall") -> list[str]:
    def cell(value):
        return "–" if value is None else f"{value:.2f}×"

    rows = [
        "| layer | batch | density | forward: SparseProp | forward: ddpm-lottery | fwd+bwd: SparseProp | "
        "fwd+bwd: ddpm-lottery | FLOP ratio (limit) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print(*rows, sep="\n", flush=True)
    for what, kind, make, shape in layers:
        for density in densities:
            dense, keep = masked_layer(make, density)
            ours = torch.nn.Sequential(copy.deepcopy(dense))
            use_kernels(ours, "sparse", masks={"0.weight": keep}, training=True)
            peers = peer_layers(peer, dense, kind) if peer is not None else []
            x = torch.randn(batch, *shape)
            found = ratios(dense, ours, peers, x, repeats, clock)
            real = float(keep.float().mean())
            (fwd_ours, fwd_peer), (bwd_ours, bwd_peer) = found["forward"], found["training"]
            rows.append(
                f"| {what} | {batch} | {real:.2%} | {cell(fwd_peer)} | {cell(fwd_ours)} | {cell(bwd_peer)} | "
                f"{cell(bwd_ours)} | {1 / real:.1f}× |"
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--densities", default="0.125,0.0625", help="surviving fractions (0.125 = 87.5 %% sparse)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layers", default="conv,linear", help="which kinds of layer: conv, linear or both")
    parser.add_argument("--threads", type=int, default=None, help="torch (and numba) threads [default: torch's]")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="thread: CPU seconds of the calling thread, for a shared machine at --threads 1 (OMP_NUM_THREADS=1)",
    )
    parser.add_argument("--build-peer", action="store_true", help="build SparseProp from its sdist if it is missing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = set(args.layers.split(","))
    if not kinds <= {"conv", "linear"}:
        parser.error(f"--layers takes conv, linear or both, not {args.layers}")
    peer, reason = load_peer(args.build_peer)
    print(
        f"# ddpm-lottery's kernels beside SparseProp: {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, {cpu_description()}; best of {args.repeats} interleaved calls, {args.clock} clock\n"
        f"# python benchmarks/peers.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        flush=True,
    )
    print(f"# {reason}\n" if reason else "", flush=True)
    bench(
        [layer for layer in LAYERS if layer[1] in kinds],
        [float(d) for d in args.densities.split(",")],
        args.batch,
        args.repeats,
        peer,
        args.clock,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
