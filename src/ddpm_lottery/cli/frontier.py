"""``ddpm-lottery frontier``: quality against measured seconds and FLOPs per sample: samplers, tickets, stage
schedules."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag
from ddpm_lottery.config import FrontierConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "frontier",
        help="quality against measured seconds and FLOPs per sample: samplers, tickets, stage schedules",
        description="Place each run's dense model under several samplers, its tickets (unstructured: same seconds, "
        "fewer FLOPs; channel tickets compacted: both real) and stage schedules on one quality-against-"
        "cost plot, with the Pareto front. Quality is the first of --measures (stored evaluations are "
        "reused); seconds are timed here, every network interleaved.",
    )
    parser.add_argument("runs", metavar="RUN", nargs="+")
    add_config_flag(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder [default: the first RUN/frontier]")
    parser.add_argument("--no-progress", action="store_true")
    add_arguments(parser, FrontierConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(FrontierConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.measures.frontier import frontier

    frontier(args.runs, config, args.out, progress=not args.no_progress)
    return 0
