"""``ddpm-lottery findings``: print the findings table of a study or run folder."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("findings", help="print the findings table of a study or run folder")
    parser.add_argument("path", help="a study folder (the --out of ddpm-lottery study) or a run folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.findings.render import print_findings

    return print_findings(args.path)
