"""What the command modules share: the --config flag, starting a launcher's processes, the
command log of a run folder, and the --level/--all-levels choice of levels.

Nothing here imports torch at module level: every ``--help`` and every flag error must stay cheap,
so each helper imports the heavy module it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of settings; flags override it")


def start_processes(config, args) -> None:
    """Training commands run in every process their launcher was asked for (see launch.py)."""
    # deferred: torch loads only when the command runs
    from ddpm_lottery.utils.launch import ensure_requested_processes

    ensure_requested_processes(config.runtime.device, args.argv)


def levels_arg(run, level, all_levels) -> list[int]:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.runs.run import Run

    return [lv.index for lv in Run.open(run).levels_arg(level, all_levels)]


def log_command(run) -> None:
    """Append the command line to RUN/commands.log (provenance for reports)."""
    # deferred: torch loads only when the command runs
    from ddpm_lottery.runs.run import Run

    Run.open(run).log_command(sys.argv[1:])


def add_level_flags(parser: argparse.ArgumentParser) -> None:
    """RUN, and which of its levels: --level N (default: the last finished) or --all-levels."""
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--level", type=int, default=None, help="[default: the last finished]")
    parser.add_argument("--all-levels", action="store_true")
