"""``ddpm-lottery study``: run a declared study (searches, controls, seeds, measures, CKA) and state its findings."""

from __future__ import annotations

import argparse

from ddpm_lottery.study.catalogue import shipped_studies


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "study",
        help="run a declared study (searches, controls, seeds, measures, CKA) and state its findings",
        description="Run the study a study file declares: the dense model, ticket searches, controls, replicates over "
        "data seeds, every measure of every level with intervals, CKA of ticket pairs with baselines, "
        "then the findings table. Finished work is reused; a killed study resumes.",
    )
    parser.add_argument(
        "file",
        help="study file (TOML or YAML with a [study] table), or the name of a shipped study: "
        + ", ".join(shipped_studies()),
    )
    parser.add_argument("--out", metavar="DIR", help="study folder [default: runs/<study name>]")
    only = parser.add_mutually_exclusive_group()  # each of these runs nothing, and each does something else
    only.add_argument("--show", action="store_true", help="print the study file (e.g. to copy a shipped one) and exit")
    only.add_argument(
        "--dry-run", action="store_true", help="print the plan and its estimated cost on this device, and run nothing"
    )
    only.add_argument(
        "--report-only",
        action="store_true",
        help="write the findings and the report of what is finished, and run nothing (e.g. while "
        "other processes run the study)",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="where the study's dataset files are (every run reads them)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto [default: the study file's, else auto]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.study.execute import execute_study
    from ddpm_lottery.study.spec import resolve_study

    if args.show:
        print(resolve_study(args.file).read_text(), end="")
        return 0
    execute_study(
        args.file,
        args.out,
        dry_run=args.dry_run,
        report_only=args.report_only,
        progress=not args.no_progress,
        data_dir=args.data_dir,
        device=args.device,
    )
    return 0
