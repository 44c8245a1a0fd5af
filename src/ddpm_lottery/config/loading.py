"""Reading settings into a config: config files (TOML or YAML), overrides, checks, stored configs.

A config file is sectioned (``[train]``) or flat; a key names a setting flat (``batch_size``) or
dotted (``train.batch_size``), and a shared setting may also sit under a command's own section
(:data:`~ddpm_lottery.config.sections.SHARED_SECTIONS`), which then wins.  Every value is checked
against its declaration wherever it comes from (flag, config file, stored run config), and
:func:`check_config` then runs each section's ``check()``.  :func:`to_dict` and
:func:`from_dict` store a config as JSON and read it back through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ddpm_lottery.config.composites import _get_section, _own_sections, _section_name, _sections, field_index
from ddpm_lottery.config.fields import CLI_SOURCE, _coerce, _problem, _value_error
from ddpm_lottery.config.sections import FILE_SECTIONS, SECTION_CLASSES, SHARED_SECTIONS, STUDY_TABLES
from ddpm_lottery.utils.errors import UserError


def _unknown(key: str, name: str, source: str, config) -> UserError:
    owners = [section for section, cls in SECTION_CLASSES.items() if name in {f.name for f in fields(cls)}]
    if owners:
        hint = f"; {name} belongs to {', '.join(f'[{o}]' for o in owners)}, which this command does not read"
    else:
        guess = difflib.get_close_matches(name, list(field_index(config)), n=1)
        hint = f"; did you mean {guess[0]}?" if guess else "; see --help for the list of settings"
    return UserError(f"unknown setting {key!r} in {source}{hint}")


def _resolve(config, key: str, source: str) -> tuple[str, dataclasses.Field]:
    """The (section name, field) a flat key (``batch_size``) or a dotted one (``train.batch_size``) names."""
    index = field_index(config)
    sections = dict(_sections(config))
    *prefix, name = key.split(".")
    name = name.replace("-", "_")
    if len(prefix) > 1:
        raise UserError(f"setting {key!r} in {source} nests sections; write section.setting, e.g. train.steps")
    if not prefix or ("" in sections and prefix[0] == _section_name(type(config))):
        if name in index:
            return index[name]
        raise _unknown(key, name, source, config)
    section = prefix[0]
    if section in sections and section != "":
        declared = {f.name: f for f in fields(sections[section])}
        if name in declared:
            return section, declared[name]
        if name in index:
            owner = index[name][0]
            if section in SHARED_SECTIONS.get(owner, ()):
                return index[name]
            places = " or ".join(f"[{s}]" for s in (owner, *SHARED_SECTIONS.get(owner, ())) if s in sections)
            raise UserError(
                f"setting {key} in {source}: {name} belongs to [{owner}], not [{section}]; move it to {places}"
            )
        raise _unknown(key, name, source, config)
    own = ", ".join(f"[{s}]" for s in _own_sections(config))
    if section in SECTION_CLASSES:
        raise UserError(f"setting {key} in {source}: this command reads {own}, not [{section}]; remove it here")
    guess = difflib.get_close_matches(section, FILE_SECTIONS, n=1)
    hint = f"did you mean [{guess[0]}]?" if guess else f"sections are {', '.join(f'[{s}]' for s in FILE_SECTIONS)}"
    raise UserError(f"unknown section [{section}] in {source} (setting {key}); {hint}")


def apply_overrides(config, overrides: dict[str, Any], source: str = "overrides"):
    """Set fields by name (flat ``batch_size`` or dotted ``train.batch_size``), each value checked.

    A dotted key must name the section that declares the field, or a command section that
    :data:`SHARED_SECTIONS` lets hold it.  Each value is checked here, so
    the message can say where it came from; the rules that span several fields wait for
    :func:`check_config`, because a config file and the flags may each set one side of them.
    """
    resolved = []
    for key, raw in overrides.items():
        section_name, f = _resolve(config, key, source)
        # A shared setting written under a command's own section ([eval] sampler) is the more
        # specific one, so it is applied after the shared section's ([sampling] sampler).
        specific = bool(section_name) and "." in key and key.split(".", 1)[0] != section_name
        resolved.append((specific, key, raw, section_name, f))
    for _, key, raw, section_name, f in sorted(resolved, key=lambda item: item[0]):
        value = _coerce(f, raw, key, source)
        problem = _problem(f, value)
        if problem:
            raise _value_error(f, problem, key, source)
        setattr(_get_section(config, section_name), f.name, value)
    return config


def changes_results(config, key: str) -> bool:
    """Does the setting ``key`` (flat or dotted, as :func:`apply_overrides` takes it) change results, that is,
    is it part of the run hash?  Settings that do not (device, checkpoint interval, how far a search goes)
    may differ between two sessions of one run or study."""
    return _resolve(config, key, "a study declaration")[1].metadata.get("hashed", True)


def check_config(config):
    """Check every value against its declaration, then run each section's ``check()``; return config.

    Configs built in code (not through flags, files or :func:`from_dict`) skip the checks until
    they pass through here.
    """
    sections = _sections(config)
    for section_name, section in sections:
        for f in fields(section):
            problem = _problem(f, getattr(section, f.name))
            if problem:
                key = f"{section_name}.{f.name}" if section_name else f.name
                raise _value_error(f, problem, key, CLI_SOURCE)
    for _, section in sections:
        if callable(getattr(section, "check", None)):
            section.check()
    if sections[0][0] and callable(getattr(config, "check", None)):
        config.check()
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat {field or section.field: value} mapping.

    A study file is a config file too: its ``[searches.*]`` and ``[controls]`` tables are left to
    the study command, and its shared sections serve every command.
    """
    raw = read_config_file(path)
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in STUDY_TABLES:
            continue
        if isinstance(value, dict):  # a [section]
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed mapping of a TOML or YAML file, or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path given to --config")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file {path} must end in .toml, .yaml or .yml")
    except UserError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise UserError(f"config file {path} cannot be parsed ({exc}); fix its syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of settings")
    return raw


def to_dict(config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, data: dict[str, Any], source: str = "the stored config"):
    """Rebuild a config from :func:`to_dict` output (unknown keys refused, missing keys default).

    The stored values go through the same checks as flags: a config.json edited by hand, or
    written before a check existed, must not start a run the flags would have refused.
    """
    config = cls()
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return check_config(apply_overrides(config, flat, source=source))
