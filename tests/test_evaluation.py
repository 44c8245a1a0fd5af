"""`evaluate`, `flops`, `cka` and `report` on a tiny finished ticket run."""

import json
import re
import shutil

import pytest
import torch

from ddpm_lottery.api import evaluate
from ddpm_lottery.cli.main import main
from ddpm_lottery.config import EvalConfig
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.measures.evaluate import load_samples
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import read_json, write_json
from ddpm_lottery.utils.seals import SCOPE_MARKER


def small_eval(**fields):
    config = EvalConfig(
        num_samples=40,
        sampling_steps=2,
        reference_samples=50,
        kid_subset_size=4,
        kid_subsets=5,
        bootstrap_rounds=40,
        heldout_images=40,
        loss_bands=4,
        device="cpu",
    )
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def quiet(*_):
    pass


@pytest.mark.slow
def test_evaluate_stores_every_figure_with_its_interval_and_how_it_was_measured(
    tiny_ticket_run, fake_extractor, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "ddpm_lottery.measures.domain.train_domain_net.__defaults__", (20, 64, 0)
    )  # validated elsewhere
    config = small_eval(cache_dir=str(tmp_path), measures=("inception", "domain", "loss"))
    records = evaluate(tiny_ticket_run, config, [0, 2], progress=False, log=quiet, extractor=fake_extractor)
    assert [(r["level"], r["measure"]) for r in records] == [
        (0, "inception"),
        (0, "domain"),
        (0, "loss"),
        (2, "inception"),
        (2, "domain"),
        (2, "loss"),
    ]
    for record in records:
        low, high = record["interval"]
        assert low <= record["value"] <= high or (record["measure"] == "loss" and low <= record["value"] <= high)
        assert len(record["replicates"]) == 40 and record["confidence"] == 0.95
        assert record["protocol"]["bootstrap_rounds"] == 40 and record["label"]
    inception = records[3]
    for key in ("fid", "kid_mean", "kid_std", "biased_warning"):
        assert key in inception
    assert inception["value"] == inception["fid"] and "strongly biased" in inception["biased_warning"]
    assert inception["protocol"]["sampling"] == {
        "sampler": "ddim",
        "steps": 2,
        "eta": 0.0,
        "num_samples": 40,
        "seed": 0,
        "weights": "ema",
    }
    assert inception["protocol"]["reference"]["count"] == 50
    assert inception["protocol"]["feature_network"] == fake_extractor.digest
    assert "N=40 vs 50 embedded train images, ddim 2 steps, seed 0, ema weights" in inception["label"]
    loss = records[5]
    assert len(loss["bands"]) == 4 and loss["protocol"]["heldout"]["split"] == "test"
    assert loss["value"] == pytest.approx(sum(loss["bands"]) / 4)
    level = Run.open(tiny_ticket_run).level(2)
    ours = {r["key"] for r in records if r["level"] == 2}
    assert sorted(r["measure"] for r in level.evaluations() if r["key"] in ours) == ["domain", "inception", "loss"]
    # both image measures read the same stored images
    samples = sorted(level.eval_dir.glob("samples-*.npz"))
    assert len(samples) == 1 and samples[0].name.startswith("samples-ddim-2steps-n40-seed0-ema-")
    images = load_samples(samples[0])
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.uint8
    import numpy as np

    per_image = np.load(level.evaluation_array_path(loss["key"]))["losses"]
    assert per_image.shape == (40, 4) and per_image.mean() == pytest.approx(loss["value"])


def test_levels_are_resampled_alike_so_differences_pair(tiny_ticket_run, fake_extractor, tmp_path):
    from ddpm_lottery.measures.inception import bootstrap_indices

    config = small_eval(cache_dir=str(tmp_path), measures=("loss",))
    zero, two = evaluate(tiny_ticket_run, config, [0, 2], progress=False, log=quiet, extractor=fake_extractor)
    import numpy as np

    level = Run.open(tiny_ticket_run).level(0)
    losses = np.load(level.evaluation_array_path(zero["key"]))["losses"].mean(1)
    index = bootstrap_indices(40, 40, 0)[7].numpy()
    assert zero["replicates"][7] == pytest.approx(losses[index].mean())
    assert zero["key"].removeprefix("loss-") != "" and zero["key"] == two["key"]


def test_a_killed_sampling_resumes_at_its_batch_with_the_same_images(tiny_ticket_run, tmp_path, monkeypatch):
    import ddpm_lottery.measures.evaluate as evaluation
    from ddpm_lottery.data.images import from_model_range
    from ddpm_lottery.models.diffusion import sample

    level = Run.open(tiny_ticket_run).level(1)
    config = small_eval(
        num_samples=10,
        sample_batch_size=4,
        sampler="ddpm",
        sampling_steps=3,  # batches 4, 4, 2
        measures=("loss",),
    )  # (a sampled measure would need N ≥ 40 for its interval)
    whole = from_model_range(
        sample(
            level_network(level, "ema"),
            level.run.config.diffusion,
            sampler="ddpm",
            num_steps=3,
            num_samples=10,
            seed=0,
            batch_size=4,
        )
    )
    real, calls = evaluation.run_sampler, []

    def killed_at_the_third_batch(*args, **kwargs):
        calls.append(kwargs["first_index"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "run_sampler", killed_at_the_third_batch)
    evaluator = evaluation.Evaluator(config, progress=False, log=quiet)
    with pytest.raises(KeyboardInterrupt):
        evaluator.samples(level)
    path = level.samples_path(evaluation.sampling_key(evaluator.sampling(level.run)))
    parts = path.with_name(f".{path.stem}.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["00000000-000004.npy", "00000004-000004.npy"]
    assert not path.exists()
    calls.clear()
    resumed = evaluator.samples(level)
    assert calls == [8]  # only the batch that was being drawn
    assert torch.equal(resumed, whole) and torch.equal(load_samples(path), whole)  # as if never killed
    assert not parts.exists()
    path.unlink()


@pytest.mark.parametrize(
    "change",
    [
        {"reference_split": "test"},
        {"kid_subsets": 7},
        {"reference_samples": 45},
        {"eta": 0.5},
        {"weights": "raw"},
        {"bootstrap_rounds": 41},
    ],
)
@pytest.mark.slow
def test_every_protocol_change_is_a_new_evaluation_kept_beside_the_old(
    tiny_ticket_run, fake_extractor, tmp_path, change
):
    base = small_eval(cache_dir=str(tmp_path))
    first = evaluate(tiny_ticket_run, base, [1], progress=False, log=quiet, extractor=fake_extractor)[0]
    messages = []
    other = evaluate(
        tiny_ticket_run,
        small_eval(cache_dir=str(tmp_path), **change),
        [1],
        progress=False,
        log=messages.append,
        extractor=fake_extractor,
    )[0]
    assert other["key"] != first["key"] and not any("[stored]" in m for m in messages)
    keys = {r["key"] for r in Run.open(tiny_ticket_run).level(1).evaluations()}
    assert {first["key"], other["key"]} <= keys


def test_another_feature_network_is_another_evaluation(tiny_ticket_run, fake_extractor, tmp_path):
    config = small_eval(cache_dir=str(tmp_path))
    first = evaluate(tiny_ticket_run, config, [1], progress=False, log=quiet, extractor=fake_extractor)[0]
    fake_extractor.digest = "fake1111"
    second = evaluate(tiny_ticket_run, config, [1], progress=False, log=quiet, extractor=fake_extractor)[0]
    assert second["key"] != first["key"] and second["protocol"]["feature_network"] == "fake1111"


@pytest.mark.slow
def test_second_evaluation_reuses_reference_samples_and_results(tiny_ticket_run, fake_extractor, tmp_path):
    config = small_eval(cache_dir=str(tmp_path), sample_seed=5)
    evaluate(tiny_ticket_run, config, [1], progress=False, log=quiet, extractor=fake_extractor)
    calls = fake_extractor.calls
    messages = []
    again = evaluate(tiny_ticket_run, config, [1], progress=False, log=messages.append, extractor=fake_extractor)
    assert fake_extractor.calls == calls  # neither reference nor samples recomputed
    assert any("cached" in m for m in messages) and any("[stored]" in m for m in messages)
    forced = evaluate(tiny_ticket_run, config, [1], progress=False, log=quiet, extractor=fake_extractor, force=True)
    assert forced[0]["fid"] == pytest.approx(again[0]["fid"])  # seeded sampling: same samples, same FID
    assert forced[0]["replicates"] == pytest.approx(again[0]["replicates"])


@pytest.mark.parametrize(
    "fields,levels,match",
    [
        ({"num_samples": 39}, [1], "too few images for a 95% bootstrap interval"),
        ({"bootstrap_rounds": 39}, [1], "too few for a 95% interval"),
        ({"kid_subset_size": 41}, [1], "KID draws subsets of 41"),
        ({"reference_samples": 3}, [1], "KID draws subsets of 4"),
        ({"heldout_split": "validation", "measures": ("loss",)}, [1], "needs held-out images"),
        ({}, [7], "no finished level 7"),
        ({"feature_network": "/nonexistent/inception.pt"}, [1], "does not exist"),
    ],
)
def test_bad_evaluation_requests(tiny_ticket_run, fields, levels, match, tmp_path):
    with pytest.raises(UserError, match=match):
        evaluate(
            tiny_ticket_run, small_eval(cache_dir=str(tmp_path), **fields), levels, progress=False, log=lambda *_: None
        )


def test_run_without_levels(tmp_path):
    from ddpm_lottery.config import LotteryConfig

    Run.prepare(tmp_path, LotteryConfig(), "lottery", {})
    with pytest.raises(UserError, match="no finished level"):
        evaluate(tmp_path, small_eval(), progress=False, log=lambda *_: None)
    with pytest.raises(UserError, match="not a run folder"):
        evaluate(tmp_path / "nothing", small_eval(), progress=False, log=lambda *_: None)


def test_flops_command(tiny_ticket_run, capsys):
    assert main(["flops", str(tiny_ticket_run), "--all-levels", "--per-module"]) == 0
    out = capsys.readouterr().out
    reductions = [float(x) for x in re.findall(r"effective \(−([\d.]+) %\)", out)]
    assert reductions[0] == 0.0 and reductions[1] > 0 and reductions[2] > reductions[1]
    assert "per sample, ddim 50 steps" in out and "storage" in out
    costs = Run.open(tiny_ticket_run).level(2).costs()
    assert costs["sparse_bytes"] < costs["dense_bytes"] and costs["weights"] == "ema"


def test_cka_of_two_tickets(tiny_ticket_run, second_ticket_run, tmp_path):
    out = tmp_path / "cka"
    assert (
        main(
            [
                "cka",
                str(tiny_ticket_run),
                str(second_ticket_run),
                "--level",
                "2",
                "--batch",
                "8",
                "--timesteps",
                "100,600",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    header = (out / "cka.csv").read_text().splitlines()[0].split(",")
    for column in (
        "layer",
        "weight_cka_rbf",
        "weight_cka_linear",
        "activation_cka_linear",
        "activation_cka_rbf",
        "activation_cka_linear_t100",
        "activation_cka_rbf_t600",
    ):
        assert column in header
    assert (out / "figure1.png").stat().st_size > 1000
    # a ticket against itself: every weight CKA is 1
    assert (
        main(
            [
                "cka",
                str(tiny_ticket_run),
                str(tiny_ticket_run),
                "--level",
                "1",
                "--batch",
                "4",
                "--timesteps",
                "100",
                "--out",
                str(tmp_path / "self"),
            ]
        )
        == 0
    )
    import csv

    with open(tmp_path / "self" / "cka.csv") as handle:
        rows = list(csv.DictReader(handle))
    off = [
        (r["layer"], r[key])
        for r in rows
        for key in ("weight_cka_linear", "weight_cka_rbf")
        if int(r["out_units"]) > 1 and not abs(float(r[key]) - 1) < 1e-9
    ]  # one output unit: undefined (nan)
    assert rows and not off, off
    # at one timestep the time embedding's output is the same for every input: CKA is undefined there (nan)
    for row in rows:
        value = float(row["activation_cka_linear"])
        assert (value != value) if "time_emb" in row["layer"] else abs(value - 1) < 1e-9


def test_cka_refuses_different_networks(tiny_ticket_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    source = Run.open(tiny_ticket_run)
    network = source.network_config()
    network["block_out_channels"] = [16, 16, 16]
    shutil.copy(source.root / SCOPE_MARKER, other)  # the same run's seal scope: its config.json verifies there
    write_json(other / source.network_path.name, network)
    shutil.copy(source.config_path, other / source.config_path.name)
    assert main(["cka", str(tiny_ticket_run), str(other), "--level", "1"]) == 2
    assert "different networks" in capsys.readouterr().err


@pytest.mark.slow
def test_report_is_one_self_contained_page(tiny_ticket_run, second_ticket_run, fake_extractor, tmp_path):
    from ddpm_lottery.measures.cka import compare_runs
    from ddpm_lottery.reporting.report import build_report

    for run in (tiny_ticket_run, second_ticket_run):
        evaluate(
            run,
            small_eval(cache_dir=str(tmp_path / "cache")),
            [0, 1, 2],
            progress=False,
            log=lambda *_: None,
            extractor=fake_extractor,
        )
        assert main(["flops", str(run), "--all-levels"]) == 0
    # a second protocol on one level only: the report shows the protocol that covers the most levels
    evaluate(
        tiny_ticket_run,
        small_eval(cache_dir=str(tmp_path / "cache"), num_samples=41),
        [2],
        progress=False,
        log=lambda *_: None,
        extractor=fake_extractor,
    )
    from ddpm_lottery.config import CkaConfig

    cka = compare_runs(
        tiny_ticket_run,
        second_ticket_run,
        2,
        CkaConfig(batch=6, timesteps=(300,)),
        out=tmp_path / "cka",
        log=lambda *_: None,
    )
    report = build_report(
        [tiny_ticket_run, second_ticket_run],
        tmp_path / "out" / "report.html",
        cka_dirs=[cka["out"]],
        figure_samples=4,
        log=lambda *_: None,
    )
    page = report.read_text()
    assert page.count('<img src="data:image/png;base64,') >= 7  # figures 1-4, sparsity bars, loss curves
    assert 'src="http' not in page and "<script" not in page
    for text in (
        "Figure 1",
        "Figure 2",
        "Figure 3",
        "Figure 4",
        "FLOPs reduction",
        "KID",
        "N=40 vs 50 embedded",
        "strongly biased",
        "How this was made",
    ):
        assert text in page, text
    assert "N=41 vs" not in page
    markdown = report.with_suffix(".md").read_text()
    assert "![Figure 2](figures/figure2_fid_vs_sparsity.png)" in markdown and "![Figure 1](" in markdown
    # every FID in the levels table carries its bootstrap interval over the generated images
    import re

    rows = [
        line for line in report.with_suffix(".md").read_text().splitlines() if line.startswith("| ") and " s |" in line
    ]
    assert rows and all(re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]†? \|", row) for row in rows)
    before = {p: p.stat().st_mtime_ns for p in tiny_ticket_run.rglob("*") if p.is_file()}
    build_report(
        [tiny_ticket_run], tmp_path / "out2" / "report.html", protocol="n41-", figure_samples=4, log=lambda *_: None
    )
    assert "N=41 vs" in (tmp_path / "out2" / "report.html").read_text()
    assert before == {p: p.stat().st_mtime_ns for p in tiny_ticket_run.rglob("*") if p.is_file()}  # reads only
    table = report.with_suffix(".md").read_text()
    assert table.count("\n|") >= 7  # header, rule, 6 levels
    with pytest.raises(UserError, match="ending in .html"):
        build_report([tiny_ticket_run], tmp_path / "report.pdf")


def test_report_output_that_cannot_be_written(tiny_ticket_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["report", str(tiny_ticket_run), "--out", str(blocker / "report.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(tiny_ticket_run, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed")
    from ddpm_lottery.reporting.report import build_report

    report = build_report([tiny_ticket_run], tmp_path / "report.html", figure_samples=4, log=lambda *_: None)
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot-report.sh"
    result = subprocess.run(
        ["bash", str(script), str(report), str(tmp_path / "shot.png"), "1200"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    from PIL import Image

    shot = Image.open(tmp_path / "shot.png")
    assert shot.size == (1200, 1200) and len(set(shot.convert("L").getdata())) > 10  # not a blank page


def test_sample_a_ticket_level(tiny_ticket_run, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "level1"
    assert (
        main(
            [
                "sample",
                str(tiny_ticket_run),
                "--level",
                "1",
                "--steps",
                "2",
                "--num-samples",
                "3",
                "--npz",
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    info = json.loads((out / "info.json").read_text())
    assert info["level"] == 1 and np.load(out / "samples.npz")["arr_0"].shape == (3, 28, 28, 1)
    assert main(["sample", str(tiny_ticket_run), "--level", "9", "--no-progress"]) == 2
    assert "no finished level 9" in capsys.readouterr().err


def test_cka_warns_when_the_tickets_are_not_two_tickets_of_one_model(tiny_ticket_run, second_ticket_run, tmp_path):
    from ddpm_lottery.config import CkaConfig
    from ddpm_lottery.measures.cka import compare_runs

    other = tmp_path / "other-init"
    shutil.copytree(second_ticket_run, other)
    stored = read_json(other / "config.json")  # a run made so: written, and sealed, by the writer
    stored["config"]["train"]["seed_init"] = 5
    write_json(other / "config.json", stored)
    messages = []
    compare_runs(
        tiny_ticket_run, other, 1, CkaConfig(batch=4, timesteps=(100,)), out=tmp_path / "c", log=messages.append
    )
    assert any("different initial weights" in m for m in messages)
    metrics_path = Run.open(other).level(1).metrics_path
    metrics = read_json(metrics_path)
    metrics["sparsity"] = 0.9
    write_json(metrics_path, metrics)
    messages = []
    compare_runs(
        tiny_ticket_run, other, 1, CkaConfig(batch=4, timesteps=(100,)), out=tmp_path / "d", log=messages.append
    )
    assert any("differ in sparsity" in m for m in messages)


@pytest.mark.slow
def test_loss_measure_validation_real_beats_blurred_beats_noise_and_held_out_is_near_training():
    """The held-out loss of a trained dense model (the reproduction study's, committed under results/);
    `python benchmarks/validate_measures.py` prints these figures."""
    from pathlib import Path

    from ddpm_lottery.measures.evaluate import loss_validation

    dense = Path(__file__).resolve().parents[1] / "results" / "cpu-digits" / "runs" / "unified-seed0"
    if not Run.is_run(dense) or not Run.open(dense).level(0).finished:
        pytest.skip("the reproduction study's dense model is not in this checkout")
    figures = loss_validation(Run.open(dense).level(0), count=200, bands=5)
    assert figures["real"] < figures["blurred"] < figures["noise"]
    # held-out digits score like training digits: no overfitting at this N
    assert abs(figures["real"] - figures["training"]) < 0.1 * figures["training"]


def test_unclipped_sampling_is_its_own_protocol_and_the_default_keys_stay():
    from ddpm_lottery.measures.evaluate import protocol_label, sampling_key, sampling_protocol

    config = EvalConfig()
    default = sampling_protocol(config)
    assert "clip_sample" not in default  # evaluations stored before the setting existed keep their keys
    config.sampling.clip_sample = False
    unclipped = sampling_protocol(config)
    assert unclipped["clip_sample"] is False and sampling_key(unclipped) != sampling_key(default)
    record = {
        "measure": "domain",
        "protocol": {
            "sampling": unclipped,
            "bootstrap_rounds": 50,
            "reference": {"count": 9, "dataset": "d", "split": "train"},
        },
    }
    assert "x0 unclipped" in protocol_label(record)
    config.sampling.sampler = "dpm-solver++"  # never clips: the setting changes nothing there
    assert "clip_sample" not in sampling_protocol(config)


@pytest.mark.slow
def test_class_accuracy_is_the_classifiers_agreement_with_the_requested_class(tmp_path, monkeypatch):
    from helpers import tiny_run_config

    from ddpm_lottery.api import train
    from ddpm_lottery.data.loaders import load_dataset
    from ddpm_lottery.measures.evaluate import Evaluator, evaluate_levels

    config = tiny_run_config(steps=2)
    config.model.class_conditional = True
    run = train(config, tmp_path / "run", progress=False, log=quiet)
    # held-out digits standing in for the samples: image i is a digit of the class the sampler asks of it (i mod 10)
    real = load_dataset("embedded", split="test")
    by_class = [real.images[real.labels == c] for c in range(10)]
    asked = torch.stack([by_class[i % 10][i // 10] for i in range(40)])
    drawn = {"images": asked}
    monkeypatch.setattr(Evaluator, "samples", lambda self, level: drawn["images"])
    scoring = small_eval(measures=("class-accuracy",), cache_dir=str(tmp_path / "cache"))
    (record,) = evaluate_levels(run, scoring, progress=False, log=quiet)
    assert record["value"] == pytest.approx(1 - record["accuracy"]) and record["accuracy"] > 0.8
    low, high = record["accuracy_interval"]
    assert low <= record["accuracy"] <= high and high - low > 0
    assert sorted(record["per_class"]) == [str(c) for c in range(10)]
    assert "guidance 1, balanced classes" in record["label"]
    drawn["images"] = torch.roll(asked, 1, 0)  # every image one class off what was asked
    (wrong,) = evaluate_levels(run, scoring, progress=False, log=quiet, force=True)
    assert wrong["accuracy"] < 0.3 and wrong["interval"][0] > record["interval"][1]


def test_class_accuracy_and_guidance_refuse_an_unconditional_run(tiny_ticket_run, tmp_path):
    with pytest.raises(UserError, match="class-accuracy measures class-conditional models"):
        evaluate(tiny_ticket_run, small_eval(measures=("class-accuracy",), cache_dir=str(tmp_path)), log=quiet)
    with pytest.raises(UserError, match="--guidance-scale needs a class-conditional model"):
        evaluate(tiny_ticket_run, small_eval(measures=("domain",), guidance_scale=2.0), log=quiet)


def test_guided_protocols_are_their_own_and_unconditional_keys_stay():
    from ddpm_lottery.measures.evaluate import sampling_key, sampling_protocol

    config = EvalConfig()
    plain = sampling_protocol(config)
    assert sampling_protocol(config, None) == plain and "guidance_scale" not in plain
    balanced = sampling_protocol(config, 10)
    config.sampling.guidance_scale, config.sampling.classes = 4.0, (3,)
    guided = sampling_protocol(config, 10)
    assert balanced["guidance_scale"] == 1 and balanced["classes"] == "balanced"
    assert guided["guidance_scale"] == 4 and guided["classes"] == [3]
    assert len({sampling_key(plain), sampling_key(balanced), sampling_key(guided)}) == 3
