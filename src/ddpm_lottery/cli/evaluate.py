"""``ddpm-lottery evaluate``: FID and KID of run levels on the standard Inception features."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag, levels_arg, log_command
from ddpm_lottery.config import EvalConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="FID and KID of run levels on the standard Inception features",
        description="Generate N images per level and compare their Inception-v3 pool3 features with the training "
        "set's (cached). Each result is stored beside its level, keyed by its whole protocol, with "
        "the images it generated.",
    )
    parser.add_argument("run", metavar="RUN")
    add_config_flag(parser)
    parser.add_argument("--level", type=int, default=None, help="level to evaluate [default: the last finished]")
    parser.add_argument("--all-levels", action="store_true", help="evaluate every finished level")
    parser.add_argument("--force", action="store_true", help="recompute evaluations already stored")
    parser.add_argument("--no-progress", action="store_true")
    add_arguments(parser, EvalConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(EvalConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.measures.evaluate import evaluate_levels

    evaluate_levels(
        args.run,
        config,
        levels_arg(args.run, args.level, args.all_levels),
        progress=not args.no_progress,
        force=args.force,
    )
    log_command(args.run)
    return 0
