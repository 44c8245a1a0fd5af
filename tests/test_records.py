"""The typed homes of stored records (runs/records.py): a metrics.json, an evaluation or a costs.json
that lacks a key, holds the wrong type or a non-finite number is refused in one line naming the file,
so NaN never reaches the findings or the report as a verdict."""

import json
import math
import shutil
from pathlib import Path

import pytest

from ddpm_lottery.cli.main import main
from ddpm_lottery.runs.records import (
    CkaSummary,
    EvaluationRecord,
    FrontierRecord,
    LevelCosts,
    LevelMetrics,
    PruningSchedule,
    StudyRecord,
    record_problem,
)
from ddpm_lottery.utils.files import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
GOOD_EVALUATION = {"measure": "loss", "value": 0.25, "interval": [0.2, 0.3], "extra": {"kept": True}}


def test_a_record_problem_names_the_key_and_what_is_wrong():
    assert record_problem(GOOD_EVALUATION, EvaluationRecord) is None
    assert (
        record_problem({**GOOD_EVALUATION, "value": math.nan}, EvaluationRecord) == "value is nan (not a finite number)"
    )
    assert record_problem({**GOOD_EVALUATION, "interval": [0.2, math.inf]}, EvaluationRecord) == (
        "interval[1] is inf (not a finite number)"
    )
    assert record_problem({"value": 1.0, "interval": [0, 1]}, EvaluationRecord) == "measure is missing"
    assert record_problem({**GOOD_EVALUATION, "value": "0.25"}, EvaluationRecord) == "value is str, not float"
    assert record_problem({**GOOD_EVALUATION, "value": True}, EvaluationRecord) == "value is bool, not float"
    assert record_problem([1, 2], EvaluationRecord) == "the record is list, not an object"
    # a NaN anywhere, not only under a declared key
    assert record_problem({**GOOD_EVALUATION, "extra": {"a": [1.0, -math.inf]}}, EvaluationRecord) == (
        "extra.a[1] is -inf (not a finite number)"
    )
    metrics = {
        "level": 1,
        "sparsity": 0.5,
        "prunable_parameters": 10,
        "surviving_prunable": 5,
        "training": {"final_loss": math.nan, "steps": 8, "wall_time_s": 1.0},
        "wall_time_s": 1.0,
    }
    assert record_problem(metrics, LevelMetrics) == "training.final_loss is nan (not a finite number)"
    costs = {"level": 1, "weights": "fp16", "dense_flops": 10, "effective_flops": 5.0, "reduction": 0.5}
    assert record_problem(costs, LevelCosts) == "weights is 'fp16', not one of 'ema', 'raw'"


def test_every_committed_record_still_reads():
    """The results folders were written before the records had types: all of them pass the check."""
    kinds = {"metrics.json": LevelMetrics, "costs.json": LevelCosts, "schedule.json": PruningSchedule}
    checked = 0
    for path in sorted(ROOT.glob("results/*/runs/*/**/*.json")):
        kind = kinds.get(path.name) or (EvaluationRecord if path.parent.name == "eval" else None)
        if kind is not None and path.parent.name.startswith(("level_", "eval")):
            assert record_problem(read_json(path), kind) is None, path
            checked += 1
    for path in sorted(ROOT.glob("results/*/study.json")):
        assert record_problem(read_json(path), StudyRecord) is None, path
    for path in sorted(ROOT.glob("results/*/cka/*/level_*/cka.json")):
        assert record_problem(read_json(path), CkaSummary, finite=False) is None, path
    for path in sorted(ROOT.glob("results/**/frontier.json")):
        assert record_problem(read_json(path), FrontierRecord, finite=False) is None, path
    if not checked:
        pytest.skip("no results/ folder in this checkout")


@pytest.fixture(scope="module")
def measured_run(tiny_ticket_run, tmp_path_factory):
    """The shared ticket run, copied once, with its held-out loss measured."""
    from ddpm_lottery.api import evaluate
    from ddpm_lottery.config import EvalConfig

    run = tmp_path_factory.mktemp("records") / "run"
    shutil.copytree(tiny_ticket_run, run)
    config = EvalConfig(measures=("loss",), heldout_images=40, loss_bands=2, bootstrap_rounds=40, device="cpu")
    evaluate(run, config, [0, 1, 2], progress=False, log=lambda *_: None)
    return run


@pytest.fixture
def measured_copy(measured_run, tmp_path):
    """A copy of the measured run for one test to corrupt."""
    return Path(shutil.copytree(measured_run, tmp_path / "run"))


def _rewrite(path: Path, change) -> None:
    """Rewrite a record as a faulty writer would: through the writer, so its seal matches what it holds."""
    record = read_json(path)
    change(record)
    write_json(path, record)  # json writes NaN as the bare word NaN, and reads it back


def _refused(capsys, args, path: Path) -> None:
    assert main(args) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not a finite number" in lines[0], captured.err
    assert "nan %" not in captured.out.lower() and "+nan" not in captured.out.lower()


def test_nan_metrics_are_refused_by_findings_and_report(measured_copy, tmp_path, capsys):
    path = measured_copy / "level_01" / "metrics.json"
    _rewrite(path, lambda m: m.update(sparsity=math.nan, wall_time_s=math.nan))
    _refused(capsys, ["findings", str(measured_copy)], path)
    _refused(capsys, ["report", str(measured_copy), "--out", str(tmp_path / "r.html")], path)
    assert not (tmp_path / "r.html").exists()


def test_a_nan_evaluation_is_refused_by_findings(measured_copy, capsys):
    paths = sorted((measured_copy / "level_02" / "eval").glob("loss-*.json"))  # other tests' protocols too
    for path in paths:
        _rewrite(path, lambda r: r.update(value=math.nan))
    assert main(["findings", str(measured_copy)]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "not a finite number" in lines[0] and any(str(p) in lines[0] for p in paths)
    assert "+nan" not in captured.out.lower() and "undecided" not in captured.out


def test_nan_costs_are_refused_by_report_in_one_line(measured_copy, tmp_path, capsys):
    path = measured_copy / "level_01" / "costs.json"
    write_json(path, {"value": math.nan})
    assert main(["report", str(measured_copy), "--out", str(tmp_path / "r.html")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and str(path) in err[0] and "dense_flops is missing" in err[0] and "ddpm-lottery flops" in err[0]
    )


def test_an_evaluation_edited_by_hand_is_refused_by_its_seal(measured_copy, capsys):
    """Issue 34: an evaluation's value edited to 0.01, its interval left as it was, flipped a verdict. The
    edit is caught by the record's seal, not by comparing the value with its interval."""
    paths = sorted((measured_copy / "level_02" / "eval").glob("loss-*.json"))
    for path in paths:
        record = json.loads(path.read_text())
        assert "_seal" in record  # edited in place, its seal kept
        record["value"] = 0.01
        path.write_text(json.dumps(record, indent=2))
    assert main(["findings", str(measured_copy)]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "does not match its seal" in lines[0], captured.err
    assert any(str(p) in lines[0] for p in paths) and "evaluate again" in lines[0]
    assert "better" not in captured.out and "worse" not in captured.out


def test_a_damaged_export_description_is_refused_in_one_line(tiny_ticket_run, tmp_path):
    from ddpm_lottery.api import export
    from ddpm_lottery.lottery.export import PIPELINE_NOTE, load_pipeline
    from ddpm_lottery.utils.errors import UserError

    out = export(tiny_ticket_run, tmp_path / "pipe", level=1, log=lambda *_: None)
    _rewrite(out / PIPELINE_NOTE, lambda note: note.pop("level"))
    with pytest.raises(UserError, match=r"is not a valid record \(level is missing\); export the level again"):
        load_pipeline(out)
    with pytest.raises(UserError, match="level is missing"):  # nor is it taken for an export of some level
        export(tiny_ticket_run, out, level=2, log=lambda *_: None)
