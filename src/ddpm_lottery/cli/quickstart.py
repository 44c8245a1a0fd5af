"""``ddpm-lottery quickstart``: the smallest shipped study on the embedded digits, ending in its findings and a
report."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quickstart",
        help="the smallest shipped study on the embedded digits, ending in its findings and a report",
        description="The same as `ddpm-lottery study quickstart --out runs/quickstart`: a dense model, unified "
        "tickets at 50 and 87.5 % sparsity, their re-init control, every level measured with intervals, "
        "the findings table and OUT/report.html (about 5 minutes on 2 idle CPU cores). Finished work is "
        "reused when it runs "
        "again. To change its settings, copy its study file (ddpm-lottery study quickstart --show) and "
        "run ddpm-lottery study on the copy.",
    )
    parser.add_argument(
        "--out", default="runs/quickstart", metavar="DIR", help="output folder [default: runs/quickstart]"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.study.quickstart import quickstart

    quickstart(args.out, progress=not args.no_progress)
    return 0
