"""``ddpm-lottery report``: one self-contained HTML report (and a Markdown table) of runs."""

from __future__ import annotations

import argparse
import sys


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="one self-contained HTML report (and a Markdown table) of runs")
    parser.add_argument("runs", metavar="RUN", nargs="+")
    parser.add_argument("--out", default="report.html", help="HTML file [default: report.html]")
    parser.add_argument("--cka", action="append", metavar="DIR", help="a `ddpm-lottery cka` output folder to include")
    parser.add_argument(
        "--protocol",
        help="show the evaluations whose protocol key contains this text (e.g. n2048); "
        "default: the protocol that covers the most levels",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.reporting.report import build_report

    build_report(
        args.runs,
        args.out,
        cka_dirs=args.cka or (),
        protocol=args.protocol,
        commands=[f"ddpm-lottery {' '.join(sys.argv[1:])}"],
    )
    return 0
