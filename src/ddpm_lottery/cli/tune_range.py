"""``ddpm-lottery tune-range``: fine-tune a level on one range of timesteps (the late network of a stage schedule)."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag, log_command, start_processes
from ddpm_lottery.config import TuneConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tune-range",
        help="fine-tune a level on one range of timesteps (the late network of a stage schedule)",
        description="Train a finished level further on the timesteps of --timestep-range only, keeping its masks, "
        "from its trained weights or its rewound theta_tau * m. Writes RUN/ranges/<...>/, whose level_00 "
        "a --schedule names by path, e.g. 600:0=RUN/ranges/<...>/level_00.",
    )
    parser.add_argument("run", metavar="RUN")
    add_config_flag(parser)
    parser.add_argument("--out", metavar="DIR", help="output run folder [default: RUN/ranges/level_NN-tLOW-HIGH-...]")
    parser.add_argument("--no-progress", action="store_true")
    add_arguments(parser, TuneConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(TuneConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.lottery.commands import run_range_tuning

    start_processes(config, args)
    run = run_range_tuning(args.run, config, args.out, progress=not args.no_progress)
    log_command(run)
    return 0
