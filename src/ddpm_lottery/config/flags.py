"""The CLI flags derived from the declarations, and the command line that rebuilds a config.

Each setting becomes a flag (``--batch-size`` for ``batch_size``), with its help and types;
:func:`config_from_args` layers defaults < config file < flags, and :func:`command_line`
renders any config back into the flags that rebuild it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ddpm_lottery.config.composites import _own_sections, _sections, field_index
from ddpm_lottery.config.fields import CLI_SOURCE, _base_type, _bounds, _flag, _is_tuple, _requirement, _scalar_type
from ddpm_lottery.config.loading import apply_overrides, check_config, load_config_file
from ddpm_lottery.config.sections import FILE_SECTIONS


def add_arguments(parser: argparse.ArgumentParser, config) -> None:
    """Add one flag per field; every default is None so that 'not given' is distinguishable."""
    for section_name, section in _sections(config):
        group = parser.add_argument_group(section_name or "settings")
        for f in fields(section):
            if f.metadata.get("derived"):
                continue
            flags = [_flag(f), *f.metadata.get("aliases", ())]
            base, _ = _base_type(f.type)
            help_text = f.metadata.get("help", "")
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            accepted = ""
            if any(_bounds(f)):
                accepted = f"; {'each ' if _is_tuple(f) else ''}{_requirement(f, lead=False)}"
            help_text = f"{help_text} [default: {default}{accepted}]"
            if base is bool:
                group.add_argument(
                    *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
                )
            else:
                group.add_argument(*flags, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(cls, args: argparse.Namespace, config_file: str | None = None):
    """Defaults < config file < command-line flags, then :func:`check_config`."""
    config = cls()
    if config_file:
        values = load_config_file(config_file)
        own = set(_own_sections(config))
        # Skipped, not refused: see SECTION_CLASSES.  Typos in section names still reach _resolve.
        values = {
            k: v
            for k, v in values.items()
            if not ("." in k and k.split(".", 1)[0] in FILE_SECTIONS and k.split(".", 1)[0] not in own)
        }
        apply_overrides(config, values, source=str(config_file))
    given = {name: getattr(args, name) for name in field_index(config) if getattr(args, name, None) is not None}
    apply_overrides(config, given, source=CLI_SOURCE)
    return check_config(config)


def _flag_words(f: dataclasses.Field, value: Any) -> list[str]:
    """The command-line words that set ``f`` to ``value``, as :func:`add_arguments` parses them."""
    if _scalar_type(f) is bool and not _is_tuple(f):
        return [_flag(f) if value else "--no-" + _flag(f)[2:]]

    def text(item: Any) -> str:
        return repr(item) if isinstance(item, float) else str(item)  # repr: the float itself, every digit

    shown = ",".join(map(text, value)) if _is_tuple(f) else text(value)
    # "--sample-seed=-3", not "--sample-seed -3": argparse may take a word starting with "-" for a flag.
    return [f"{_flag(f)}={shown}"] if shown.startswith("-") else [_flag(f), shown]


def command_line(prog: str, config, positional: Sequence[str] = ()) -> str:
    """The shell command that rebuilds ``config``: ``prog``, then ``positional`` (a command's own
    words, such as a RUN folder or ``--out DIR``), then a flag for every setting off its default.

    Unhashed settings count too (they were chosen, and the command should repeat them); None is
    left out, as no flag gives it.  Parsing the command with :func:`add_arguments` and
    :func:`config_from_args` gives back an equal config.
    """
    words = list(positional)
    for _, section in _sections(config):
        for f in fields(section):
            value = getattr(section, f.name)
            if value is not None and value != f.default and not f.metadata.get("derived"):
                words += _flag_words(f, value)
    return " ".join([prog, *map(shlex.quote, words)])
