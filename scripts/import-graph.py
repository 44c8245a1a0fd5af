"""Print the package's import graph: modules, edges, cycles and function-local imports.

Every import is counted, including those inside functions and under ``if TYPE_CHECKING:``, because a
cycle hidden behind a function-local or an annotation-only import is still a cycle of concepts; the
cycles are between modules, within a package or across packages (import-linter's ``acyclic_siblings``
contract in pyproject.toml forbids them too, and counts the same imports).  Exits 1 when it finds one.
Usage: ``python scripts/import-graph.py``
(``--edges`` lists every edge, ``--local`` every function-local import).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "ddpm_lottery"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != PACKAGE:
            return []
    else:
        anchor = current.split(".") if is_package else current.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base + "." + alias.name for alias in node.names] + [base]


def graph(root: Path):
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    edges: dict[str, set[str]] = {name: set() for name in files}
    local: list[tuple[str, int, str]] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        function_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                function_nodes.update(id(child) for child in ast.walk(node) if child is not node)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = resolve(name, is_package, node)
            hits = {t for t in targets if t in files and t != name}
            # "from pkg import sub" names a submodule; "from pkg.mod import x" names mod
            best = {t for t in hits if not any(o != t and o.startswith(t + ".") for o in hits)}
            if not best and targets:
                continue
            if id(node) in function_nodes and (best or targets):
                local.append((name, node.lineno, ast.unparse(node)))
            edges[name].update(best)
    return files, edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--edges", action="store_true", help="list every edge")
    parser.add_argument("--local", action="store_true", help="list every function-local import")
    args = parser.parse_args()
    files, edges, local = graph(Path(args.root))
    sizes = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    largest = max(sizes, key=sizes.get)
    found = cycles(edges)
    print(
        f"modules: {len(files)}; edges: {sum(map(len, edges.values()))}; "
        f"function-local imports: {len(local)}; cycles: {len(found)}; "
        f"largest module: {largest} ({sizes[largest]} lines)"
    )
    for component in found:
        print("cycle: " + ", ".join(component))
    if args.edges:
        for name in sorted(edges):
            print(f"{name} -> {', '.join(sorted(edges[name])) or '-'}")
    if args.local:
        for name, line, text in local:
            print(f"{name}:{line}: {text}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
