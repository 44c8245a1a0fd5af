"""Sparse ``Linear`` layers at transformer shapes against PyTorch's dense ones, forward and training.

    python benchmarks/token_linear.py [--rows 256,3136,4096] [--shapes 96x96,384x384,384x1536,1536x384]
                                      [--densities 0.125,0.0625] [--repeats 7] [--threads N] [--clock wall|thread]

A transformer's ``Linear`` layers see B x T token rows (a DiT on 28x28 latents with patch 4 at batch 64:
3,136).  Each ratio is dense time / sparse time of the same inputs and random mask, interleaved in this one
process (alternating which goes first, after two warm-up calls each; the best of ``--repeats`` counts):

* forward: the layer's call without autograd (sampling);
* forward + backward: the call and the gradients of its input and weight (and bias), as a training step
  needs them;
* sparse forward alone: the sparse call repeated by itself, with no dense call between (the interleaved
  figure beside it can differ by a tenth or so on two threads).

GFLOP/s are the dense layer's multiply-adds x 2 over its time, and for the sparse layer the surviving
weights' ("useful") over its time.  Nothing here is asserted by a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
from common import CLOCKS, cpu_description, interleaved_minima, interleaved_minimum

from ddpm_lottery.kernels.layers import use_kernels


def _pair(in_features: int, out_features: int, density: float):
    torch.manual_seed(0)
    dense = torch.nn.Linear(in_features, out_features)
    keep = torch.rand(dense.weight.shape) < density
    with torch.no_grad():
        dense.weight.mul_(keep)
    sparse = torch.nn.Sequential(copy.deepcopy(dense))
    use_kernels(sparse, "sparse", masks={"0.weight": keep}, training=True)
    return dense, sparse, float(keep.float().mean())


def _training_call(layer, x: torch.Tensor, upstream: torch.Tensor):
    def call():
        layer.zero_grad(set_to_none=True)
        inputs = x.detach().requires_grad_()
        (layer(inputs) * upstream).sum().backward()

    return call


def bench(rows_list, shapes, densities, repeats, clock: str = "wall") -> list[str]:
    rows_out = [
        "| rows | in → out | density | dense fwd ms | sparse fwd ms | fwd × | fwd+bwd × | FLOP ratio (limit) | "
        "dense GFLOP/s | sparse GFLOP/s (useful) | useful / dense | sparse fwd alone ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(*rows_out, sep="\n", flush=True)
    for rows in rows_list:
        for in_features, out_features in shapes:
            for density in densities:
                dense, sparse, real = _pair(in_features, out_features, density)
                x = torch.randn(rows, in_features)
                with torch.no_grad():
                    t_dense, t_sparse = interleaved_minimum(lambda: dense(x), lambda: sparse(x), repeats, clock)
                    (t_alone,) = interleaved_minima([lambda: sparse(x)], repeats, clock)
                upstream = torch.randn(rows, out_features)
                b_dense, b_sparse = interleaved_minimum(
                    _training_call(dense, x, upstream), _training_call(sparse, x, upstream), repeats, clock
                )
                flops = 2.0 * rows * in_features * out_features
                dense_rate, useful_rate = flops / t_dense / 1e9, flops * real / t_sparse / 1e9
                rows_out.append(
                    f"| {rows} | {in_features} → {out_features} | {real:.2%} | {t_dense * 1e3:.2f} | "
                    f"{t_sparse * 1e3:.2f} | {t_dense / t_sparse:.2f}× | {b_dense / b_sparse:.2f}× | "
                    f"{1 / real:.1f}× | {dense_rate:.0f} | {useful_rate:.1f} | {useful_rate / dense_rate:.0%} | "
                    f"{t_alone * 1e3:.2f} |"
                )
                print(rows_out[-1], flush=True)
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="256,3136,4096", help="token rows (B x T) of a call")
    parser.add_argument(
        "--shapes",
        default="96x96,192x192,384x384,384x1536,1536x384,1536x1536",
        help="in x out features of each layer",
    )
    parser.add_argument("--densities", default="0.125,0.0625", help="surviving fractions (0.125 = 87.5 %% sparse)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="thread: CPU seconds of the calling thread, for a shared machine at --threads 1",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch (and numba) threads [default: torch's]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    print(
        f"# sparse Linear at transformer shapes: {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, {cpu_description()}; best of {args.repeats} interleaved calls, {args.clock} clock\n"
        f"# python benchmarks/token_linear.py {' '.join(argv if argv is not None else sys.argv[1:])}\n",
        flush=True,
    )
    bench(
        [int(r) for r in args.rows.split(",")],
        shapes,
        [float(d) for d in args.densities.split(",")],
        args.repeats,
        args.clock,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
