"""``ddpm-lottery find-ticket``: find winning tickets by iterative magnitude pruning with rewinding."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag, log_command, start_processes
from ddpm_lottery.config import LotteryConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "find-ticket",
        help="find winning tickets by iterative magnitude pruning with rewinding",
        description="Iterative magnitude pruning with late rewinding (the paper's Algorithm 1). Strategies: "
        "unified, global, varying (p + j*q per module, forward order; --order reverse for the "
        "ablation); controls: --reinit or --strategy random with --control-of RUN. Re-running "
        "the same command continues a killed search; finished levels are never recomputed; a higher "
        "--target-sparsity or --max-rounds extends a finished one.",
    )
    add_config_flag(parser)
    parser.add_argument(
        "--out",
        metavar="RUN",
        help="run folder [default: runs/lottery-<config hash>, controls: RUN/branches/<control>-<hash>]",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_arguments(parser, LotteryConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(LotteryConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.lottery.commands import search_ticket

    start_processes(config, args)
    run = search_ticket(config, args.out, progress=not args.no_progress)
    log_command(run)
    return 0
