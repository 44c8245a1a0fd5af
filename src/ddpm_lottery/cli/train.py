"""``ddpm-lottery train``: train a DDPM into a run folder."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag, log_command, start_processes
from ddpm_lottery.config import RunConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a DDPM into a run folder",
        description="Train a DDPM. A killed run continues with --resume.",
    )
    add_config_flag(parser)
    parser.add_argument("--out", metavar="RUN", help="run folder [default: runs/train-<config hash>]")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(parser, RunConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(RunConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.api import train

    start_processes(config, args)
    run = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    log_command(run)
    return 0
