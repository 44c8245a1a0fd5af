"""The docs' generated parts, made from the code at every build so they cannot go stale.

* ``<!-- generated: cli -->`` becomes the command-line reference, read from the argparse parser
  (``ddpm_lottery.cli.main.build_parser``): every command, its arguments and their help.
* ``<!-- generated: settings -->`` becomes the settings reference, read from the declarations in
  ``ddpm_lottery.config`` (the dataclass fields and their help strings): every section of a settings file,
  every setting with its flag, default, bounds and whether it is part of a run's identity.
* ``<!-- generated: api -->`` becomes one mkdocstrings entry (``::: module.name``) per public name of the
  package, from the table ``ddpm_lottery/__init__.py`` loads them by, so the API page follows every move.
* ``<!-- generated: modules -->`` becomes the table of every module of the package with the first line of
  its docstring, package by package in the layer order of the import contract in ``pyproject.toml``.
* ``<!-- generated: design -->`` becomes the design documents of the code, package by package: a
  package's docstring where it has one of more than a line, else the docstrings of its modules
  (mkdocstrings entries with members off).
* The figures of the committed results (``results/*/figures/*.png`` and the frontier plots) are added to
  the site under their repository paths, so the results pages show the committed files themselves.

A mkdocs hook (``hooks:`` in mkdocs.yml): no plugin package needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("results/*/figures/*.png", "results/**/frontier/frontier.png", "results/*/frontier-*/frontier.png")
MISSING = dataclasses.MISSING


def on_files(files, config):
    from mkdocs.structure.files import File  # deferred: the tests import this hook without mkdocs installed

    for pattern in FIGURES:
        for path in sorted(ROOT.glob(pattern)):
            uri = path.relative_to(ROOT).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File(uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


ROLE = re.compile(r":(?:mod|class|func|data|meth|attr|exc|obj):`~?([^`]+)`")
HTML_ROLE = re.compile(r":(?:mod|class|func|data|meth|attr|exc|obj):<code>~?([^<]*)</code>")


def rst_inline(text: str) -> str:
    """A docstring's reST inline markup as Markdown: roles and double backticks become code spans."""
    return ROLE.sub(r"`\1`", text).replace("``", "`")


def on_page_content(html, page, config, files):
    # the module docstrings are reST-flavoured: show their roles as code, and a literal block's "::" as ":"
    return HTML_ROLE.sub(r"<code>\1</code>", html).replace("::</p>", ":</p>")


def on_page_markdown(markdown, page, config, files):
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: settings -->" in markdown:
        markdown = markdown.replace("<!-- generated: settings -->", settings_reference())
    if "<!-- generated: api -->" in markdown:
        markdown = markdown.replace("<!-- generated: api -->", api_reference())
    if "<!-- generated: design -->" in markdown:
        markdown = markdown.replace("<!-- generated: design -->", design_reference())
    if "<!-- generated: modules -->" in markdown:
        markdown = markdown.replace("<!-- generated: modules -->", modules_reference())
    return markdown


# ----------------------------------------------------------------------------------------------
# The command line


def cell(text) -> str:
    """Plain text (with `code spans`, or reST's ``literals``) for one Markdown table cell or paragraph."""
    text = rst_inline(" ".join(str(text).split()))
    parts = text.split("`")
    specials = "\\|[]*_"
    if len(parts) % 2 == 0:  # an unpaired backtick: all of it is plain text
        parts, specials = [text], specials + "`"
    for i in range(0, len(parts), 2):
        plain = parts[i].replace("&", "&amp;").replace("<", "&lt;")
        for char in specials:  # Markdown's: a help text is plain text
            plain = plain.replace(char, "\\" + char)
        parts[i] = plain
    for i in range(1, len(parts), 2):
        parts[i] = code(parts[i])
    return "".join(parts)


def code(text) -> str:
    """Text as a code span in a Markdown table cell."""
    return "`" + " ".join(str(text).split()) + "`"  # the tables extension splits no code span at a pipe


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Every command of the parser: name -> (its parser, its one-line help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def flag_text(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")
    takes_value = action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)
    value = ""
    if takes_value:
        value = (
            " {" + ",".join(map(str, action.choices)) + "}"
            if action.choices
            else f" {action.metavar or action.dest.upper()}"
        )
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        values = dict(vars(action), prog=prog)
        if values.get("choices") is not None:
            values["choices"] = ", ".join(map(str, values["choices"]))
        text = text % values
    if action.required and action.option_strings:
        text = f"(required) {text}"
    return cell(text)


def usage_line(name: str, parser: argparse.ArgumentParser) -> str:
    words = [f"ddpm-lottery {name}"]
    for action in parser._actions:
        if not action.option_strings and action.help is not argparse.SUPPRESS:
            metavar = action.metavar or action.dest
            words.append(f"{metavar} [{metavar} ...]" if action.nargs == "+" else metavar)
    if any(a.option_strings and not isinstance(a, argparse._HelpAction) for a in parser._actions):
        words.append("[options]")
    return " ".join(words)


def cli_reference() -> str:
    # deferred: the CLI pulls in the package (and torch) only when a page asks for its reference
    from ddpm_lottery.cli.main import build_parser

    parser = build_parser()
    commands = subcommands(parser)
    out = ["| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#{name}) | {cell(help)} |" for name, (_, help) in commands.items()]
    out.append("")
    for name, (sub, help) in commands.items():
        out += [f"## `ddpm-lottery {name}` {{#{name}}}", ""]
        out += [cell(sub.description or help[:1].upper() + help[1:]), ""]
        out += ["```text", usage_line(name, sub), "```", ""]
        for group in sub._action_groups:
            actions = [
                a
                for a in group._group_actions
                if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            ]
            if not actions:
                continue
            title = {"positional arguments": "arguments", "options": "options"}.get(group.title, f"[{group.title}]")
            out += [f"**{title}**", "", "| argument | meaning |", "|---|---|"]
            out += [f"| {flag_text(a)} | {help_text(a, sub.prog)} |" for a in actions]
            out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The settings


def config_attribute(name: str):
    """A name of ``ddpm_lottery.config``: from the package, else from the module of the package defining it."""
    package = importlib.import_module("ddpm_lottery.config")
    if hasattr(package, name):
        return getattr(package, name)
    for info in pkgutil.walk_packages(package.__path__, "ddpm_lottery.config."):
        module = importlib.import_module(info.name)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"ddpm_lottery.config declares no {name}")


def shown(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "(none)"
    return str(value)


def accepted(f: dataclasses.Field) -> str:
    meta = f.metadata
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(code(shown(c)) for c in meta["choices"]))
    for key, sign in (("minimum", "≥"), ("above", ">"), ("maximum", "≤"), ("below", "<")):
        if meta.get(key) is not None:
            parts.append(f"{sign} {meta[key]}")
    return "; ".join(parts)


def type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def commands_reading(parser: argparse.ArgumentParser, sections: dict[str, type]) -> dict[str, list[str]]:
    """Section name -> the commands whose flags include it: the argument groups that hold its settings."""
    fields_of = {
        name: {f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
        for name, cls in sections.items()
    }
    readers: dict[str, list[str]] = {}
    for command, (sub, _) in subcommands(parser).items():
        for group in sub._action_groups:
            dests = {a.dest for a in group._group_actions}
            for name, names in fields_of.items():
                if names and names == dests:
                    readers.setdefault(name, []).append(command)
    return readers


def settings_reference() -> str:
    # deferred: as for the CLI reference
    from ddpm_lottery.cli.main import build_parser

    sections = config_attribute("SECTION_CLASSES")
    readers = commands_reading(build_parser(), sections)
    out = ["| section | declared by | flags on |", "|---|---|---|"]
    for section, cls in sections.items():
        on = ", ".join(f"`{c}`" for c in readers.get(section, [])) or "(settings files only)"
        out.append(f"| [`[{section}]`](#{section}) | `{cls.__name__}` | {on} |")
    out.append("")
    for section, cls in sections.items():
        out += [f"## `[{section}]` {{#{section}}}", ""]
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):  # a dataclass without a docstring gets its signature
            out += [cell(doc), ""]
        on = readers.get(section)
        out += [
            f"Flags on: {', '.join(f'`ddpm-lottery {c}`' for c in on)}."
            if on
            else "Read from settings files only (no command has these flags).",
            "",
        ]
        out += ["| setting | flag | default | accepts | identity | meaning |", "|---|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = (
                f.default
                if f.default is not MISSING
                else (f.default_factory() if f.default_factory is not MISSING else None)
            )
            names = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
            if type_name(f.type).startswith("bool"):  # BooleanOptionalAction: --x and --no-x
                names.insert(1, "--no-" + f.name.replace("_", "-"))
            flags = "(derived: no flag)" if meta.get("derived") else ", ".join(f"`{flag}`" for flag in names)
            identity = "yes" if meta.get("hashed", True) else "no"
            out.append(
                f"| `{f.name}` | {flags} | {code(shown(default))} | {accepted(f) or code(type_name(f.type))} "
                f"| {identity} | {cell(meta.get('help', ''))} |"
            )
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The Python API and the modules


def api_reference() -> str:
    import ddpm_lottery

    by_module: dict[str, list[str]] = {}
    for name, module in ddpm_lottery._EXPORTS.items():
        by_module.setdefault(module, []).append(name)
    out = []
    for module, names in sorted(by_module.items(), key=lambda item: API_ORDER.get(item[0].split(".")[1], 99)):
        out += [f"## `{module}`", ""]
        for name in sorted(names, key=lambda n: (not n[0].isupper(), n)):
            out += [f"::: {module}.{name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(out)


API_ORDER = {"api": 0, "config": 1}


def layers() -> list[str]:
    """The packages bottom to top, from the import contract in pyproject.toml (top to bottom there)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for contract in project.get("tool", {}).get("importlinter", {}).get("contracts", []):
        if contract.get("type") == "layers":
            return [layer.split(".")[-1] for layer in reversed(contract["layers"])]
    return []


def modules_reference() -> str:
    import ast

    source = ROOT / "src" / "ddpm_lottery"
    order = layers()
    rows = []
    for path in sorted(source.rglob("*.py")):
        parts = list(path.relative_to(source.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] == "__main__":
            continue
        package = parts[1] if len(parts) > 1 else ""
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.strip().split("\n\n")[0].replace("\n", " ")
        lines = len(path.read_text().splitlines())
        rank = order.index(package) if package in order else len(order)
        rows.append((rank, ".".join(parts), first, lines))
    out = ["| layer | module | lines | what it holds |", "|---|---|---:|---|"]
    for rank, name, first, lines in sorted(rows):
        layer = order[rank] if rank < len(order) else "–"
        out.append(f"| {layer} | `{name}` | {lines} | {cell(first)} |")
    return "\n".join(out)


def docstring(path: Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text())) or ""


def design_reference() -> str:
    source = ROOT / "src" / "ddpm_lottery"
    names = sorted(
        p.stem if p.suffix == ".py" else p.name
        for p in source.iterdir()
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.name != "__init__.py")
    )
    order = layers()
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    out = []
    for name in reversed(names):  # top to bottom, as the diagram reads
        out += [f"### `{name}`", ""]
        package = source / name
        if not package.is_dir() or "\n" in docstring(package / "__init__.py").strip():
            entries = [f"ddpm_lottery.{name}"]
        else:
            entries = [
                ".".join(("ddpm_lottery", *path.relative_to(source).with_suffix("").parts)).removesuffix(".__init__")
                for path in sorted(package.rglob("*.py"))
                if path.name != "__main__.py" and "\n" in docstring(path).strip()
            ]
        for entry in entries:
            out += [
                f"::: {entry}",
                "    options:",
                "      members: false",
                "      show_root_heading: true",
                "      heading_level: 4",
                "",
            ]
    return "\n".join(out)
