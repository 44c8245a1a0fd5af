"""``ddpm-lottery cka``: CKA similarity of two tickets, layer by layer (the paper's Fig. 1)."""

from __future__ import annotations

import argparse

from ddpm_lottery.cli.common import add_config_flag
from ddpm_lottery.config import CkaConfig, add_arguments, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("cka", help="CKA similarity of two tickets, layer by layer (the paper's Fig. 1)")
    parser.add_argument("run_a", metavar="RUN_A")
    parser.add_argument("run_b", metavar="RUN_B")
    add_config_flag(parser)
    parser.add_argument("--out", help="output folder [default: RUN_A/cka/<RUN_B>-levelXX]")
    add_arguments(parser, CkaConfig())
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(CkaConfig, args, args.config)
    # deferred: torch loads only when the command runs
    from ddpm_lottery.measures.cka import compare_runs

    compare_runs(args.run_a, args.run_b, None if config.level < 0 else config.level, config, out=args.out)
    return 0
