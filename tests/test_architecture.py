"""The package's shape: no import cycles, deferred imports that say why, modules of one concept.

Every import counts, function-local ones included (scripts/import-graph.py reads them from the
source); the layer order between packages is import-linter's contract in pyproject.toml, run in CI.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ddpm_lottery"
LONGEST = 400


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import-graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_itself_back_through_others():
    graph = _graph_module()
    _, edges, _ = graph.graph(ROOT / "src")
    assert graph.cycles(edges) == []


def test_an_annotation_only_import_back_is_a_cycle_and_the_contract_forbids_module_cycles(tmp_path):
    package = tmp_path / "ddpm_lottery"
    (package / "runs").mkdir(parents=True)
    for init in (package / "__init__.py", package / "runs" / "__init__.py"):
        init.write_text("")
    (package / "runs" / "run.py").write_text("from ddpm_lottery.runs.level import Level\n")
    (package / "runs" / "level.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ddpm_lottery.runs.run import Run\n"
    )
    graph = _graph_module()
    _, edges, _ = graph.graph(tmp_path)
    assert graph.cycles(edges) == [["ddpm_lottery.runs.level", "ddpm_lottery.runs.run"]]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {"type": "acyclic_siblings", "ancestors": ["ddpm_lottery"]}.items() <= next(
        c for c in contracts if c["type"] == "acyclic_siblings"
    ).items()


def test_the_import_graph_script_fails_on_a_cycle(tmp_path):
    package = tmp_path / "ddpm_lottery"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ddpm_lottery import b\n")
    (package / "b.py").write_text("from ddpm_lottery import a\n")
    script = [sys.executable, str(ROOT / "scripts" / "import-graph.py")]
    assert subprocess.run([*script, "--root", str(tmp_path)], capture_output=True, check=False).returncode == 1
    assert subprocess.run(script, capture_output=True, check=False).returncode == 0  # the package itself


def test_the_graph_sees_function_local_imports(tmp_path):
    package = tmp_path / "ddpm_lottery"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ddpm_lottery.b import g  # deferred: test\n")
    (package / "b.py").write_text("from ddpm_lottery import a\n\ndef g():\n    pass\n")
    graph = _graph_module()
    _, edges, local = graph.graph(tmp_path)
    assert graph.cycles(edges) == [["ddpm_lottery.a", "ddpm_lottery.b"]]
    assert [(name, line) for name, line, _ in local] == [("ddpm_lottery.a", 2)]


def test_function_local_imports_say_what_they_defer():
    """A function-local import stays only to keep a heavy dependency off a cheap path, and says so."""
    unexplained = []
    for path in _modules():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            imports = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
            if not imports:
                continue
            first = min(n.lineno for n in imports)
            # the reason sits on the first deferred import's line or in the comment just above it
            context = " ".join(lines[max(first - 3, 0) : first]).lower()
            if "deferred" not in context:
                unexplained.append(f"{path.relative_to(ROOT)}:{first}")
    assert unexplained == [], "function-local imports without a '# deferred: why' comment: " + ", ".join(unexplained)


def test_modules_hold_one_concept():
    """No module runs past about 400 lines unless its docstring says why it is one concept."""
    long = []
    for path in _modules():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > LONGEST and "one concept" not in docstring.lower():
            long.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert long == []


def test_importing_the_package_loads_no_torch():
    import subprocess

    code = "import sys, ddpm_lottery; ddpm_lottery.__version__; assert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_public_names_resolve():
    import ddpm_lottery

    for name in ddpm_lottery.__all__:
        assert getattr(ddpm_lottery, name) is not None, name
