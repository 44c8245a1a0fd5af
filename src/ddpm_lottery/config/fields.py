"""The field engine: one setting's declaration, its type, the values it accepts, and their coercion.

Each setting is a dataclass field with a help string, declared with :func:`setting`.
Field metadata keys: ``help`` (str), ``hashed`` (bool, default True: part of the run's
identity), ``choices`` (tuple, optional), ``aliases`` (extra flags), and the bounds
``minimum``/``maximum`` (inclusive) and ``above``/``below`` (exclusive).  A section may define
``check(self)`` for rules that involve several of its fields; :func:`~ddpm_lottery.config.loading.check_config`
calls it.

Nothing here knows a declared section: this module turns a field and a raw value (a flag's
string, a config file's value, a stored config's value) into the field's type, and says in words
what is wrong with a value (``--steps must be positive (an integer ≥ 1), got 0``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import field
from typing import Any

from ddpm_lottery.utils.errors import UserError


def setting(
    default: Any,
    help: str,
    *,
    hashed: bool = True,
    choices: tuple | None = None,
    aliases: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    derived: bool = False,
):
    """Declare one setting: its default, its help text, whether it changes results, what it accepts.

    A ``derived`` setting is filled in by the tool from other settings (a digest of a file they
    name) and stored and hashed like the others, but is no flag: nobody types it.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones; on a tuple
    setting they bound every item.  ``None`` stays allowed on an optional setting, where it
    means "the default behaviour".  Float settings must always be finite.
    """
    if (minimum is not None and above is not None) or (maximum is not None and below is not None):
        raise TypeError("a setting takes one lower bound (minimum or above) and one upper bound (maximum or below)")
    return field(
        default=default,
        metadata={
            "help": help,
            "hashed": hashed,
            "choices": choices,
            "aliases": aliases,
            "minimum": minimum,
            "maximum": maximum,
            "above": above,
            "below": below,
            "derived": derived,
        },
    )


# The source name apply_overrides gets for flags: its messages then name only the flag.
CLI_SOURCE = "the command line"


# ----------------------------------------------------------------------------------------------
# Types and the accepted values of each setting


def _base_type(annotation) -> tuple[type, bool]:
    """Resolve `int | None` etc. to (int, optional)."""
    if isinstance(annotation, str):
        annotation = eval(
            annotation, {"tuple": tuple, "int": int, "float": float, "str": str, "bool": bool, "None": None}
        )  # eval of our own annotations only
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], True
    return annotation, False


def _is_tuple(f: dataclasses.Field) -> bool:
    return typing.get_origin(_base_type(f.type)[0]) is tuple


def _scalar_type(f: dataclasses.Field) -> type:
    """The type of the value, or of each item of a tuple setting: int, float, bool or str."""
    base, _ = _base_type(f.type)
    return typing.get_args(base)[0] if typing.get_origin(base) is tuple else base


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}
_PLURAL_KINDS = {int: "integers", float: "numbers", bool: "true/false values", str: "names"}


def _kind(f: dataclasses.Field) -> str:
    if _is_tuple(f):
        return f"comma-separated {_PLURAL_KINDS.get(_scalar_type(f), 'values')}"
    return _KINDS.get(_scalar_type(f), "a value")


def _bounds(f: dataclasses.Field) -> tuple[tuple[Any, bool] | None, tuple[Any, bool] | None]:
    """((lower, inclusive) or None, (upper, inclusive) or None)."""
    meta = f.metadata
    low = (
        (meta["minimum"], True)
        if meta.get("minimum") is not None
        else (meta["above"], False)
        if meta.get("above") is not None
        else None
    )
    high = (
        (meta["maximum"], True)
        if meta.get("maximum") is not None
        else (meta["below"], False)
        if meta.get("below") is not None
        else None
    )
    return low, high


def _requirement(f: dataclasses.Field, lead: bool = True) -> str:
    """A numeric setting's accepted values in words: 'an integer ≥ 1', 'a finite number in [0, 1)'."""
    kind = _KINDS[_scalar_type(f)]
    low, high = _bounds(f)
    if low and high:
        return f"{kind} in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}"
    if low:
        text = f"{kind} {'≥' if low[1] else '>'} {low[0]}"
        # Lead with "positive", the word the project's other messages use for this rule.
        positive = low == (0, False) or (low == (1, True) and _scalar_type(f) is int)
        return f"positive ({text})" if positive and lead else text
    if high:
        return f"{kind} {'≤' if high[1] else '<'} {high[0]}"
    return kind


def _within(f: dataclasses.Field, value) -> bool:
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return False
    low, high = _bounds(f)
    if low and not (value >= low[0] if low[1] else value > low[0]):
        return False
    return not (high and not (value <= high[0] if high[1] else value < high[0]))


def _item_problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with one value (or one tuple item) of ``f``, or None."""
    kind = _scalar_type(f)
    shown = repr(value) if isinstance(value, str) else str(value)
    if kind in (int, float):
        # bool is an int to Python, so `steps: true` in YAML would otherwise train 1 step.
        right_type = isinstance(value, numbers.Integral if kind is int else numbers.Real)
        if isinstance(value, bool) or not right_type or not _within(f, value):
            return f"must be {_requirement(f)}, got {shown}"
    elif kind is bool and not isinstance(value, bool):
        return f"must be true or false, got {shown}"
    elif kind is str and not isinstance(value, str):
        return f"must be text, got {shown}"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"is {shown}, not one of {', '.join(map(str, choices))}"
    return None


def _problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with a field's value, to follow its flag in a message ('must be ..., got ...'), or None."""
    _, optional = _base_type(f.type)
    if value is None:
        return None if optional else f"must be {_kind(f)}, got nothing"
    if not _is_tuple(f):
        return _item_problem(f, value)
    if not isinstance(value, tuple):
        return f"must be {_kind(f)}, got {value!r}"
    for item in value:
        problem = _item_problem(f, item)
        if problem:
            if problem.startswith("must be"):
                return "items " + problem.replace("must be", "must each be", 1)
            return f"has the item {problem.removeprefix('is ')}"
    return None


def _value_error(f: dataclasses.Field, problem: str, key: str, source: str) -> UserError:
    action = "pick one of them" if "not one of" in problem else "give a value in that range"
    if source == CLI_SOURCE:
        return UserError(f"{_flag(f)} {problem}; {action}")
    return UserError(f"{_flag(f)} {problem} ({key} in {source}); {action} there")


def _coerce_one(raw: Any, kind: type) -> Any:
    """One value (or tuple item) from a CLI string or a config file; ValueError if it is not one."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind in (int, float) and isinstance(raw, bool):
        raise ValueError(raw)  # see _item_problem: a boolean is no count
    if kind is int:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        return int(raw.strip() if isinstance(raw, str) else raw)
    if kind is float:
        return float(raw)
    return raw.strip() if isinstance(raw, str) else str(raw)


def _coerce(f: dataclasses.Field, raw: Any, key: str, source: str) -> Any:
    """Convert a value from a CLI string or a config file to the field's type."""
    _, optional = _base_type(f.type)
    where = "" if source == CLI_SOURCE else f" ({key} in {source})"
    if raw is None:
        if optional:
            return None
        raise UserError(f"{_flag(f)} cannot be empty{where}; give {_kind(f)}")
    try:
        if _is_tuple(f):
            items = [i for i in raw.split(",") if i.strip()] if isinstance(raw, str) else list(raw)
            return tuple(_coerce_one(item, _scalar_type(f)) for item in items)
        return _coerce_one(raw, _scalar_type(f))
    except (TypeError, ValueError):
        raise UserError(f"{_flag(f)} expects {_kind(f)}, got {raw!r}{where}; give {_kind(f)}") from None


def checked_value(section: type, name: str, raw: Any, source: str) -> Any:
    """One setting's value from outside the settings (a pretrained model's config.json, say),
    coerced and bounded exactly as its flag is; a bad one is refused naming ``source``."""
    (f,) = [f for f in dataclasses.fields(section) if f.name == name]
    value = _coerce(f, raw, name, source)
    problem = _problem(f, value)
    if problem:
        raise _value_error(f, problem, name, source)
    return value
