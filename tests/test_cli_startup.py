"""A cheap start: `ddpm-lottery --help`, every `COMMAND --help` and a flag error load no heavy module.

Each case runs `ddpm_lottery.cli.main.main([...])` in a fresh interpreter and reads back which of the
heavy modules are in `sys.modules` afterwards; nothing here is timed (benchmarks/startup.py times it).
"""

import argparse
import json
import subprocess
import sys

import pytest

from ddpm_lottery.cli.main import build_parser

HEAVY = ("torch", "diffusers", "numba", "matplotlib")

SCRIPT = """
import json, sys
from ddpm_lottery.cli.main import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def start(argv: list[str], cwd) -> tuple[dict, str]:
    """(the exit code and the heavy modules loaded, stderr) of `main(argv)` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(argv=argv, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def command_names() -> list[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices)


def test_every_command_is_checked():
    assert len(command_names()) >= 17 and {"train", "find-ticket", "study", "quickstart"} <= set(command_names())


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []], ids=["--help", "--version", "no-command"])
def test_top_level_help_loads_no_heavy_module(argv, tmp_path):
    result, _ = start(argv, tmp_path)
    assert result["code"] == (2 if not argv else 0)
    assert result["heavy"] == []


@pytest.mark.parametrize("command", command_names())
def test_command_help_loads_no_heavy_module(command, tmp_path):
    result, _ = start([command, "--help"], tmp_path)
    assert result["code"] == 0
    assert result["heavy"] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--steps", "abc"],
        ["train", "--config", "/nonexistent.toml"],
        ["find-ticket", "--ratio-increment", "nan"],
        ["sample", "RUN", "--sampler", "euler"],
        ["evaluate", "RUN", "--num-samples", "x"],
        ["tune-range", "RUN", "--timestep-range", "x"],
        ["frontier", "RUN", "--measures", "nope"],
        ["cka", "RUN_A", "RUN_B", "--level", "x"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_bad_flag_is_one_line_and_loads_no_heavy_module(argv, tmp_path):
    result, stderr = start(argv, tmp_path)
    assert result["code"] not in (0, None)
    assert stderr.strip().count("\n") == 0 and stderr.startswith("ddpm-lottery: error: "), stderr
    assert result["heavy"] == []


@pytest.mark.parametrize("argv", [["--bogus"], ["train", "--bogus"], ["nosuch"]], ids=" ".join)
def test_an_unknown_flag_or_command_loads_no_heavy_module(argv, tmp_path):
    """argparse's own errors: its usage line, then the one error line."""
    result, stderr = start(argv, tmp_path)
    assert result["code"] == 2
    assert stderr.strip().splitlines()[-1].startswith("ddpm-lottery: error: "), stderr
    assert result["heavy"] == []
