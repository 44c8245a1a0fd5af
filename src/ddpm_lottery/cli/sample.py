"""``ddpm-lottery sample``: generate images from a run."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag
from ddpm_lottery.config import SampleConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sample",
        help="generate images from a run",
        description="Write a PNG grid (and .npz on request) of samples from a run.",
    )
    parser.add_argument("run", metavar="RUN", help="a training run folder")
    add_config_flag(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder [default: RUN/samples/<sampler>-<steps>...]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(parser, SampleConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(SampleConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.api import sample

    sample(args.run, config, args.out, progress=not args.no_progress)
    return 0
