"""The typed homes of the records a run folder stores, and the check every read of them passes.

A record is JSON on disk and a plain ``dict`` in memory (the findings, the report and the API read
it by key), so each record type is a :class:`~typing.TypedDict`: it names the keys every reader
relies on and their types, and :func:`read_record` refuses a file that lacks one, holds the wrong
type, or holds a non-finite number anywhere (Python's ``json`` reads ``NaN`` without complaint, and a
NaN that reached the findings would print as a verdict). The refusal is one line naming the file and
the key, so a hand-edited or half-written record never turns into a silent wrong result.

Keys beyond the declared ones are kept as they are: older and newer versions of a record still read.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal, TypedDict

from ddpm_lottery.config.sections import WeightSet
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import read_json


class TrainingSummary(TypedDict):
    final_loss: float
    steps: int
    wall_time_s: float


class LevelMetrics(TypedDict):
    """``level_NN/metrics.json``: written last, so its presence marks the level finished."""

    level: int
    sparsity: float
    prunable_parameters: int
    surviving_prunable: int
    training: TrainingSummary
    wall_time_s: float


class EvaluationRecord(TypedDict):
    """``level_NN/eval/KEY.json``: one measure of one level under one protocol, with its interval."""

    measure: str
    value: float
    interval: list[float]


class LevelCosts(TypedDict):
    """``level_NN/costs.json``: FLOPs, parameters and storage of the level's network."""

    level: int
    weights: WeightSet
    dense_flops: int
    effective_flops: float
    reduction: float


class PruningSchedule(TypedDict):
    """``level_NN/schedule.json``: how the round that made the level pruned, module by module."""

    level: int
    strategy: str
    schedule: list[dict]


class StudyDeclaration(TypedDict):
    name: str
    searches: dict
    controls: dict
    data_seeds: list[int]
    runs: dict


class StudyRecord(TypedDict):
    """``OUT/study.json``: the study a folder holds, as declared when it started."""

    declaration: StudyDeclaration


class FrontierRecord(TypedDict):
    """``frontier/frontier.json``: every point's quality, seconds and FLOPs (a point not measured is NaN)."""

    measure: str
    how: str
    points: list[dict]
    settings: dict


class CkaSummary(TypedDict):
    """``cka/PAIR/level_NN/cka.json``: two tickets' CKA, per half of the layers (a layer's CKA can be NaN:
    one unit, or no variation, leaves nothing to align; so this record is checked for keys and types)."""

    run_a: str
    run_b: str
    level: int
    sparsity: list[float]
    caption: str  # a study's pairs add "halves" (the baselines' per-half means) beside these
    mean_weight_cka_rbf_first_half: float
    mean_weight_cka_rbf_second_half: float


class ExportNote(TypedDict):
    """``ddpm_lottery_pipeline.json`` in an exported pipeline folder: what it was exported from."""

    run: str
    level: int
    weights: WeightSet
    compacted: bool
    parameters: int


def read_record(path: str | Path, kind: type, what: str, fix: str, finite: bool = True) -> dict[str, Any]:
    """Read a stored record and check it against its typed home ``kind``; a failure is one line.
    ``finite=False`` for the records whose NaN means "not measured" or "undefined" (frontier, CKA)."""
    record = read_json(path, what, fix)
    problem = record_problem(record, kind, finite=finite)
    if problem:
        raise UserError(f"{what} {path} is not a valid record ({problem}); {fix}")
    return record


def record_problem(record: Any, kind: type, where: str = "", finite: bool = True) -> str | None:
    """What is wrong with ``record`` as a ``kind`` (a TypedDict), or None if nothing is."""
    if not isinstance(record, dict):
        return f"{where or 'the record'} is {type(record).__name__}, not an object"
    hints = typing.get_type_hints(kind)
    for key in sorted(kind.__required_keys__):
        name = f"{where}.{key}" if where else key
        if key not in record:
            return f"{name} is missing"
        problem = _value_problem(record[key], hints[key], name)
        if problem:
            return problem
    return _non_finite(record, where) if finite else None


def _value_problem(value: Any, hint: Any, name: str) -> str | None:
    origin = typing.get_origin(hint)
    if typing.is_typeddict(hint):
        return record_problem(value, hint, name)
    if origin is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else f"{name} is {value!r}, not one of {', '.join(map(repr, choices))}"
    if origin is list:
        if not isinstance(value, list):
            return f"{name} is {type(value).__name__}, not a list"
        (item,) = typing.get_args(hint)
        for i, element in enumerate(value):
            problem = _value_problem(element, item, f"{name}[{i}]")
            if problem:
                return problem
        return None
    expected = {int: (int,), float: (int, float), str: (str,), dict: (dict,), bool: (bool,)}[hint]
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, expected):
        return f"{name} is {type(value).__name__}, not {hint.__name__}"
    return None


def _non_finite(value: Any, where: str) -> str | None:
    """The first NaN or infinity anywhere in a record (nested objects and lists included)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the record'} is {value} (not a finite number)"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for name, element in items:
        problem = _non_finite(element, name)
        if problem:
            return problem
    return None
