"""``ddpm-lottery flops``: FLOPs, parameters and storage of run levels, dense vs ticket."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_level_flags


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("flops", help="FLOPs, parameters and storage of run levels, dense vs ticket")
    add_level_flags(parser)
    parser.add_argument("--per-module", action="store_true", help="print the per-module table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.lottery.costs import stored_costs
    from ddpm_lottery.runs.run import Run

    run = Run.open(args.run)
    for level in run.levels_arg(args.level, args.all_levels):
        c = stored_costs(level)  # read where stored: a read-only run, or one committed sparse, works
        print(
            f"{args.run} level {level.index}: {c['dense_flops'] / 1e9:.4f} GFLOPs "
            f"({c['dense_macs'] / 1e9:.4f} GMACs) "
            f"dense per denoiser call, {c['effective_flops'] / 1e9:.4f} GFLOPs effective "
            f"(−{100 * c['reduction']:.2f} %); {c['counter']}"
        )
        for name, value in c["per_sample_flops"].items():
            print(f"  per sample, {name}: {value['dense'] / 1e9:.2f} → {value['effective'] / 1e9:.2f} GFLOPs")
        print(
            f"  parameters {c['surviving_parameters']:,} of {c['dense_parameters']:,}; storage "
            f"{c['sparse_bytes']:,} B sparse export vs {c['dense_bytes']:,} B dense ({c['storage_ratio']:.3f}x), "
            f"{c['weights']} weights"
        )
        if args.per_module:
            print(f"  {'j':>3}  {'module':<34} {'dense MFLOPs':>13} {'effective':>11} {'reduction':>9}")
            for m in c["per_module"]:
                print(
                    f"  {m['index']:>3}  {m['name']:<34} {m['dense_flops'] / 1e6:>13.2f} "
                    f"{m['effective_flops'] / 1e6:>11.2f} {100 * m['reduction']:>8.1f}%"
                )
    return 0
