"""The README's promises: the two set-up commands, CI calling the test command, one command per strategy."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_lines():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    test_command = next(line for line in code_lines() if "pytest" in line)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_main_command_is_the_quickstart():
    assert any(line.endswith("ddpm-lottery quickstart") and line.startswith("pip install") for line in code_lines())


def test_every_strategy_has_a_full_command_that_parses():
    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    common = next(line for line in code_lines() if line.startswith("COMMON="))
    common_args = shlex.split(common.split("=", 1)[1].strip('"'))
    commands = [line for line in code_lines() if line.startswith("ddpm-lottery find-ticket")]
    seen = set()
    for line in commands:
        words = shlex.split(line.split("#")[0])
        words = [w for word in words for w in (common_args if word == "$COMMON" else [word])]
        args = parser.parse_args(words[1:])
        strategy = "reinit" if args.reinit else (args.strategy or "varying")
        seen.add(f"{strategy}-{args.order or 'forward'}" + ("-oneshot" if args.one_shot else ""))
    assert {"varying-forward", "varying-reverse", "unified-forward", "global-forward", "random-forward",
            "reinit-forward", "varying-forward-oneshot"} <= seen


def test_readme_run_folder_is_the_run_models_own_documentation():
    import textwrap

    from ddpm_lottery import runs

    doc = runs.__doc__
    block = textwrap.dedent(doc[doc.index("    RUN/config.json"):doc.index("Every write is atomic")]).rstrip()
    assert block in README


def test_the_study_figures_in_the_readme_are_the_committed_findings():
    """Every findings row the README shows is a row of the committed study's findings.md, verbatim: no figure is
    transcribed by hand."""
    findings = ROOT / "results" / "cpu-digits" / "findings.md"
    if not findings.exists():
        pytest.skip("the reproduction study's results are not in this checkout")
    rows = set(findings.read_text().splitlines())
    shown = [line for line in README.splitlines() if re.match(r"\| \([abcd]\) |\| \d+ \| \d+\.\d\d % \| \w+_cka_", line)]
    assert len(shown) >= 10
    assert [line for line in shown if line not in rows] == []


def test_every_command_in_the_readme_code_blocks_parses():
    """Each `ddpm-lottery` command a reader would paste from a code block is accepted by today's CLI."""
    import contextlib
    import io

    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    text = "\n".join(block.replace("\\\n", " ") for block in blocks)  # continuation lines joined
    common = next(line for line in text.splitlines() if line.startswith("COMMON="))
    common_args = shlex.split(common.split("=", 1)[1].strip().strip('"'))
    commands = []
    for line in text.splitlines():
        for part in re.split(r"&&|;|\|", line.split("  #")[0]):
            words = shlex.split(part.strip(), comments=True)
            if words[:1] == ["ddpm-lottery"]:
                commands.append([w for word in words[1:] for w in (common_args if word == "$COMMON" else [word])])
    assert len(commands) >= 20
    for args in commands:
        if ">" in args:
            args = args[:args.index(">")]
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(args)
            except SystemExit as exit:
                assert exit.code == 0, f"ddpm-lottery {shlex.join(args)}: {err.getvalue().strip()}"
