"""The ``ddpm-lottery`` command line.  Flags come from the declarations in :mod:`config`.

One module per command (``cli/train.py``, ``cli/find_ticket.py``, ...), as diffusers' ``commands/``
has it: each defines ``register(commands)``, which adds its subparser and sets ``func``, and
``run(args)``, which runs it and returns the exit code.  :data:`COMMANDS` is their order in
``ddpm-lottery --help``; what several commands share (the --config flag, starting processes,
logging the command line, levels) is in :mod:`ddpm_lottery.cli.common`.

A start stays cheap: building the parser needs only the config declarations, so ``--help``, every
``COMMAND --help`` and a one-line flag error load neither torch nor diffusers; a command's ``run``
imports what it needs.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_lottery import __version__
from ddpm_lottery.cli import (
    cka,
    compact,
    evaluate,
    export,
    find_ticket,
    findings,
    flops,
    frontier,
    modules,
    presets,
    quickstart,
    report,
    sample,
    sparsity,
    study,
    train,
    tune_range,
)
from ddpm_lottery.utils.errors import UserError

# The command modules, in the order `ddpm-lottery --help` lists them.
COMMANDS = (
    train,
    sample,
    find_ticket,
    modules,
    sparsity,
    evaluate,
    flops,
    tune_range,
    export,
    compact,
    frontier,
    cka,
    report,
    study,
    findings,
    presets,
    quickstart,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-lottery", description="Find, measure and use winning lottery tickets in diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"ddpm-lottery {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ddpm-lottery: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ddpm-lottery: interrupted; finished work is kept, continue with --resume", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
