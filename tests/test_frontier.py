"""The efficiency frontier: points, measured seconds, FLOPs, the Pareto front, the table and figure."""

import json

import pytest

from ddpm_lottery.config import FrontierConfig
from ddpm_lottery.measures.frontier import Point, _mark_pareto, frontier, parse_sampler
from ddpm_lottery.utils.errors import UserError


def test_pareto_front_keeps_only_undominated_points():
    points = [
        Point("a", "dense", "r", "ddim", 10, value=5.0, seconds_per_sample=1.0),
        Point("b", "dense", "r", "ddim", 20, value=4.0, seconds_per_sample=2.0),
        Point("c", "ticket", "r", "ddim", 20, value=4.5, seconds_per_sample=2.0),  # slower than a, worse than b
        Point("d", "ticket", "r", "ddim", 5, value=5.0, seconds_per_sample=0.5),
    ]  # dominates a
    _mark_pareto(points, "seconds_per_sample", "pareto_seconds")
    assert [p.pareto_seconds for p in points] == [False, True, False, True]


def test_sampler_points_are_checked():
    assert parse_sampler("dpm-solver++:20") == ("dpm-solver++", 20)
    for bad in ("ddim", "ddim:0", "euler:10", "ddim:x"):
        with pytest.raises(UserError, match="SAMPLER:STEPS"):
            parse_sampler(bad)


def _config(kernels="dense", **frontier):
    config = FrontierConfig(
        measures=("inception",),
        num_samples=40,
        bootstrap_rounds=40,
        reference_samples=40,
        kid_subset_size=20,
        timing_batch=4,
        timing_repeats=1,
        kernels=kernels,
    )
    config.frontier.dense_samplers = ("ddpm:8", "ddim:4")
    config.frontier.ticket_samplers = ("ddim:4",)
    for key, value in frontier.items():
        setattr(config.frontier, key, value)
    return config


@pytest.mark.slow
def test_with_the_sparse_kernels_each_unstructured_ticket_is_timed_as_itself(tiny_ticket_run, fake_extractor, tmp_path):
    import shutil

    ticket_run = tmp_path / "ticket"
    shutil.copytree(tiny_ticket_run, ticket_run)
    result = frontier(
        [ticket_run],
        _config(kernels="sparse"),
        tmp_path / "out",
        progress=False,
        log=lambda *_: None,
        extractor=fake_extractor,
    )
    tickets = [p for p in result["points"] if p["kind"] == "ticket"]
    dense = next(p for p in result["points"] if p["kind"] == "dense" and p["sampler"] == "ddim")
    assert len(tickets) == 2 and "--kernels sparse" in result["how"]
    assert dense["kernels"] == "dense kernels"
    for ticket in tickets:
        assert ticket["kernels"].startswith("sparse kernels in ")
        assert ticket["seconds_per_sample"] != dense["seconds_per_sample"]  # its own network was timed
    table = (tmp_path / "out" / "frontier.md").read_text()
    assert "| kernels |" in table and "sparse kernels in " in table


@pytest.mark.slow
def test_frontier_of_unstructured_and_channel_tickets(tiny_ticket_run, tiny_channel_run, fake_extractor, tmp_path):
    import shutil

    # copies: the frontier stores its evaluations in the runs, which other tests share
    ticket_run, channel_run = tmp_path / "ticket", tmp_path / "channel"
    shutil.copytree(tiny_ticket_run, ticket_run)
    shutil.copytree(tiny_channel_run, channel_run)
    result = frontier(
        [ticket_run, channel_run],
        _config(sweep_levels=(0, 2), switch_steps=(500,)),
        tmp_path / "out",
        progress=False,
        log=lambda *_: None,
        extractor=fake_extractor,
    )
    points = {(p["run"], p["label"]): p for p in result["points"]}
    by_run = lambda run, kind: [p for p in result["points"] if p["run"] == str(run) and p["kind"] == kind]
    dense = {p["sampler"]: p for p in by_run(ticket_run, "dense")}
    tickets = by_run(ticket_run, "ticket")
    assert len(tickets) == 2 and len(points) == len(result["points"])
    for ticket in tickets:  # dense kernels: the dense model's seconds, fewer effective FLOPs
        assert ticket["seconds_per_sample"] == dense["ddim"]["seconds_per_sample"]
        assert ticket["effective_flops_per_sample"] < dense["ddim"]["effective_flops_per_sample"]
        assert ticket["flops_per_sample"] == dense["ddim"]["flops_per_sample"]
        assert ticket["flop_ratio"] > 1
    assert dense["ddpm"]["seconds_per_sample"] == pytest.approx(2 * dense["ddim"]["seconds_per_sample"])
    channels = by_run(channel_run, "channel")
    channel_dense = next(p for p in by_run(channel_run, "dense") if p["sampler"] == "ddim")
    for ticket in channels:  # compacted: the executed FLOPs fall too
        assert ticket["flops_per_sample"] < channel_dense["flops_per_sample"]
        assert ticket["flops_per_sample"] == ticket["effective_flops_per_sample"]
    schedules = by_run(ticket_run, "schedule") + by_run(ticket_run, "schedule control")
    assert {p["schedule"] for p in schedules} == {
        "1000:500=level_00,500:0=level_02",
        "1000:500=level_02,500:0=level_00",
    }
    assert any(p["pareto_seconds"] for p in result["points"])
    # each ticket's quality minus the dense model's, paired: same sampler, and against dense DDPM
    from ddpm_lottery.measures.stats import paired_difference
    from ddpm_lottery.runs.run import Run

    ticket = next(t for t in tickets if t["sampler"] == "ddim")
    versus = ticket["extra"]["vs_dense_same_sampler"]
    assert (
        versus["against"] == dense["ddim"]["label"]
        and ticket["extra"]["vs_dense_ddpm"]["against"] == dense["ddpm"]["label"]
    )
    records = {
        r["level"]: r
        for index in (0, ticket["level"])
        for r in Run.open(ticket_run).level(index).evaluations()
        if r["label"] == ticket["protocol"] and r["measure"] == "inception"
    }
    expected = paired_difference([(records[ticket["level"]], records[0])], 0.95)
    assert versus["difference"] == pytest.approx(ticket["value"] - dense["ddim"]["value"])
    assert versus["interval"] == pytest.approx([expected.low, expected.high])
    assert versus["verdict"] in ("better", "worse", "not separable")
    assert "vs_dense_same_sampler" not in dense["ddim"]["extra"]
    table = (tmp_path / "out" / "frontier.md").read_text()
    assert "− dense, same sampler" in table
    assert "FLOP ratio" in table and "N=40" in table
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000
    stored = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert stored["timing_batch"] == 4 and stored["machine_load"] >= 0  # how busy the machine was while timing
    assert f"machine load {stored['machine_load']:.1f} on" in table
    # drawn again without the sweep, the stored schedules keep their kinds: sparse early is the control
    again = frontier(
        [ticket_run], _config(), tmp_path / "again", progress=False, log=lambda *_: None, extractor=fake_extractor
    )
    kinds = {p["schedule"]: p["kind"] for p in again["points"] if p["schedule"]}
    assert kinds == {
        "1000:500=level_00,500:0=level_02": "schedule",
        "1000:500=level_02,500:0=level_00": "schedule control",
    }


def test_frontier_refuses_the_loss_and_unknown_levels(tiny_ticket_run, tmp_path):
    config = _config()
    config.eval.measures = ("loss",)
    with pytest.raises(UserError, match="does not sample"):
        frontier([tiny_ticket_run], config, tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(UserError, match="no finished level 7"):
        frontier([tiny_ticket_run], _config(levels=(7,)), tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(UserError, match="two levels"):
        frontier([tiny_ticket_run], _config(sweep_levels=(0, 1, 2)), tmp_path, progress=False, log=lambda *_: None)


@pytest.mark.slow
def test_the_report_shows_a_stored_frontier(tiny_ticket_run, fake_extractor, tmp_path):
    import shutil

    from ddpm_lottery.reporting.report import build_report

    run = tmp_path / "run"
    shutil.copytree(tiny_ticket_run, run)
    frontier([run], _config(dense_samplers=("ddim:4",)), progress=False, log=lambda *_: None, extractor=fake_extractor)
    page = build_report([run], tmp_path / "report.html", log=lambda *_: None).read_text()
    assert "Efficiency frontier" in page and "FLOP ratio" in page
    twin = (tmp_path / "report.md").read_text()  # the Markdown report carries the frontier table and links its figure
    assert "## Efficiency frontier: run" in twin and "](run/frontier/frontier.png)" in twin and "FLOP ratio" in twin


def test_a_sweep_level_the_run_has_not_finished_is_named_by_its_own_flag(tiny_ticket_run, tmp_path, capsys):
    config = _config(sweep_levels=(0, 5), switch_steps=(500,))
    with pytest.raises(UserError, match="--sweep-levels names level 5") as caught:
        frontier([tiny_ticket_run], config, tmp_path, progress=False, log=lambda *_: None)
    assert "--schedule" not in str(caught.value)
