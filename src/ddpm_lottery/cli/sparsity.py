"""``ddpm-lottery sparsity``: print the per-module sparsity table of a ticket run."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("sparsity", help="print the per-module sparsity table of a ticket run")
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--level", type=int, default=None, help="level [default: the last finished]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.reporting.tables import sparsity_table

    print(sparsity_table(args.run, args.level))
    return 0
