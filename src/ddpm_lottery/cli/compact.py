"""``ddpm-lottery compact``: write a level's physically smaller network (channel tickets, or the channels an
unstructured mask emptied)."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_level_flags


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compact",
        help="write a level's physically smaller network (channel tickets, or the channels an "
        "unstructured mask emptied)",
        description="Compact run levels with Torch-Pruning into smaller networks that compute the same outputs: "
        "a channel ticket loses its removed channels; an unstructured ticket loses exactly the channels "
        "no surviving weight reads (and whose norm groups are all dead). Writes compact.safetensors "
        "and compact.json beside the level; the frontier and stage schedules then run it.",
    )
    add_level_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.lottery.networks import compact_level
    from ddpm_lottery.runs.run import Run

    run = Run.open(args.run)
    for level in run.levels_arg(args.level, args.all_levels):
        r = compact_level(level)
        print(
            f"{args.run} level {r['level']} ({r['how']}): removed {r['channels_removed']} of {r['channels_total']} "
            f"channels; parameters {r['parameters']:,} → {r['compact_parameters']:,}; GFLOPs per call "
            f"{r['flops'] / 1e9:.4f} → {r['compact_flops'] / 1e9:.4f} ({r['flops'] / r['compact_flops']:.2f}×); "
            f"outputs differ by at most {r['max_abs_difference']:.2g}; wrote {level.compact_path}"
        )
    return 0
