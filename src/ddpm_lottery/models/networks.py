"""Networks: diffusers' ``UNet2DModel`` through named presets, or from the user's own model.

A preset is a plain dict of ``UNet2DModel`` keyword arguments.  ``in_channels`` left out
means "take it from the data" (the CPU presets serve both digits and colour images).

A *source* (:mod:`ddpm_lottery.models.sources`) replaces the preset: ``--pretrained`` (a ``UNet2DModel`` or ``DDPMPipeline`` folder:
its config, weights and noise schedule) or ``--unet-config`` (a config file, fresh weights).  Its
digest enters the run's identity (``model.source_digest``), so a run follows the model's content,
not the folder's name.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.utils import WEIGHTS_NAME

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.models.sources import (
    ARCHITECTURE_SETTINGS,
    NetworkSource,
    network_source,
    quiet_loading,
    refused_as_unsafe,
)
from ddpm_lottery.utils.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    # Ho et al. 2020, official run_cifar.py; identical to google/ddpm-cifar10-32: 35,746,307 parameters.
    "ddpm-cifar10": dict(
        sample_size=32,
        in_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        act_fn="silu",
        time_embedding_type="positional",
        dropout=0.1,
    ),
    # The same family sized for 28x28 digits: three levels (28 -> 14 -> 7), so no padding is needed.
    "ddpm-mnist": dict(
        sample_size=28,
        in_channels=1,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        act_fn="silu",
        time_embedding_type="positional",
        dropout=0.1,
    ),
    # CPU presets, sized to train in minutes on two cores: attention at the lowest resolution only.
    "small": dict(
        sample_size=28,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        norm_num_groups=8,
        dropout=0.0,
    ),
    "tiny": dict(
        sample_size=28,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        norm_num_groups=8,
        dropout=0.0,
    ),
}

PRESET_PURPOSE = {
    "ddpm-cifar10": "DDPM CIFAR-10 U-Net (Ho et al. 2020), 32x32x3",
    "ddpm-mnist": "DDPM family sized for 28x28 digits",
    "small": "CPU preset, ~1.5M parameters",
    "tiny": "CPU preset for tests and the quickstart, ~0.3M parameters",
}


def input_size(config) -> int:
    """The image side a run feeds its network: --image-size, else --sample-size, else the preset's
    (or the source's)."""
    source = network_source(config.model)
    if source is not None:
        return config.data.image_size or source.config.get("sample_size", 32)
    if config.model.preset not in PRESETS:
        raise UserError(
            f"unknown preset {config.model.preset!r}; choose one of {', '.join(PRESETS)} "
            "(`ddpm-lottery presets` lists them)"
        )
    return config.data.image_size or config.model.sample_size or PRESETS[config.model.preset]["sample_size"]


def input_shape(config) -> tuple[int, int]:
    """(channels, side) a run's network sees, without reading the data (a dry run may precede the download)."""
    channels = (
        config.data.channels
        or PRESETS[config.model.preset].get("in_channels")
        or (3 if config.data.dataset in ("cifar10", "cifar100", "imagefolder") else 1)
    )
    return channels, input_size(config)


def unet_kwargs(
    model_config: ModelConfig, data_channels: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments of a preset with the config's overrides applied.

    ``image_size`` (the data's side) sets the sample size unless ``--sample-size`` overrides it.
    """
    source = network_source(model_config)
    if source is not None:
        return _source_kwargs(source, data_channels, image_size)
    if model_config.preset not in PRESETS:
        raise UserError(
            f"unknown preset {model_config.preset!r}; choose one of {', '.join(PRESETS)} "
            "(`ddpm-lottery presets` lists them)"
        )
    kwargs = dict(PRESETS[model_config.preset])
    if image_size is not None:
        kwargs["sample_size"] = image_size
    for name in ARCHITECTURE_SETTINGS:
        value = getattr(model_config, name)
        if value is not None:
            kwargs[name] = value
    preset_channels = kwargs.get("in_channels")
    if preset_channels is None:
        kwargs["in_channels"] = data_channels or 1
    elif data_channels is not None and data_channels != preset_channels:
        raise UserError(
            f"preset {model_config.preset} takes {preset_channels}-channel images but the data has "
            f"{data_channels}; pass --channels {preset_channels} to convert the data, or choose another preset"
        )
    kwargs["out_channels"] = kwargs["in_channels"]
    if model_config.class_conditional:
        kwargs["num_class_embeds"] = _label_rows(model_config)
    _check_architecture(kwargs)
    return kwargs


def _label_rows(model_config: ModelConfig) -> int:
    """A class-conditional U-Net's label table: one row per class, and the null class of guidance."""
    if model_config.num_classes is None:
        # filled in from the data when a run starts (models.conditioning.adopt_classes)
        raise UserError("a class-conditional network needs its number of classes; load the run's data first")
    return model_config.num_classes + 1


def _source_kwargs(source: NetworkSource, data_channels: int | None, image_size: int | None) -> dict[str, Any]:
    """A source's architecture as it is: the data must fit it, not the other way round."""
    kwargs = dict(source.config)
    channels = kwargs.get("in_channels", 3)
    if data_channels is not None and data_channels != channels:
        raise UserError(
            f"{source.name} takes {channels}-channel images but the data has {data_channels}; pass "
            f"--channels {channels} to convert the data"
        )
    size = kwargs.get("sample_size")
    if image_size is not None and size is not None and image_size != size:
        raise UserError(
            f"{source.name} takes {size}x{size} images but the data is {image_size}x{image_size}; pass "
            f"--image-size {size}"
        )
    return kwargs


def _check_architecture(kwargs: dict[str, Any]) -> None:
    levels = len(kwargs["block_out_channels"])
    if len(kwargs["down_block_types"]) != levels or len(kwargs["up_block_types"]) != levels:
        raise UserError(
            f"the U-Net has {levels} levels (block_out_channels) but "
            f"{len(kwargs['down_block_types'])} down and {len(kwargs['up_block_types'])} up block "
            "types; give one block type per level"
        )
    groups = kwargs.get("norm_num_groups", 32)
    bad = [c for c in kwargs["block_out_channels"] if c % groups]
    if bad:
        raise UserError(
            f"channels {bad} are not divisible by norm_num_groups={groups}; "
            "change --block-out-channels or --norm-num-groups"
        )
    size = kwargs["sample_size"]
    factor = 2 ** (levels - 1)
    if size % factor:
        raise UserError(
            f"sample size {size} is not divisible by {factor}, which a {levels}-level U-Net "
            "needs; pick a multiple of it with --image-size / --sample-size"
        )


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the global RNG for weight initialisation without disturbing the caller's RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


#: More weights than this (16 GiB in float32) is a mistake, not a network this tool can train.
MAX_PARAMETERS = 2**32


def _check_size(kwargs: dict[str, Any], source: NetworkSource | None) -> None:
    """Count the network's weights on the meta device (no memory, no random draws) before building it."""
    fix = f"give --pretrained {source.name} a smaller network" if source else "choose smaller model overrides"
    try:
        with torch.device("meta"):
            shape = UNet2DModel.from_config(kwargs) if source is not None else UNet2DModel(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"diffusers rejected the network settings ({exc}); {fix}") from None
    count = count_parameters(shape)
    if count > MAX_PARAMETERS:
        raise UserError(f"the network would hold {count:,} weights, more than {MAX_PARAMETERS:,}; {fix}")


def build_model(
    model_config: ModelConfig,
    data_channels: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    initial: str = "config",
) -> UNet2DModel:
    """The network with its initial weights theta_0: freshly drawn from ``seed`` (the same seed gives
    bit-identical weights), or a ``--pretrained`` model's own weights (``initial="random"``: drawn
    anyway, for the random re-init control)."""
    source = network_source(model_config)  # read once: its config and where its weights are
    if source is not None and model_config.class_conditional:
        raise UserError(
            "--class-conditional adds a label table to a preset's network; a --pretrained or --unet-config "
            "network brings its own architecture, so drop --class-conditional"
        )
    kwargs = (
        _source_kwargs(source, data_channels, image_size)
        if source is not None
        else unet_kwargs(model_config, data_channels, image_size)
    )
    _check_size(kwargs, source)
    with seeded(seed):
        try:
            model = UNet2DModel.from_config(kwargs) if source is not None else UNet2DModel(**kwargs)
        except (ValueError, TypeError) as exc:
            raise UserError(f"diffusers rejected the network settings ({exc}); fix the model overrides") from None
    if source is not None and source.unet_dir is not None and initial == "config":
        try:
            with quiet_loading():
                pretrained = UNet2DModel.from_pretrained(source.unet_dir, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            weights = source.files[1]
            if weights.name == WEIGHTS_NAME and refused_as_unsafe(exc):
                raise UserError(
                    f"--pretrained {source.name}: {weights.name} is a pickle that holds more than plain tensors, "
                    "so it was refused unread (no code in it ran); give a folder saved with safetensors"
                ) from None
            raise UserError(
                f"--pretrained {source.name}: its weights cannot be loaded "
                f"({str(exc).splitlines()[0][:300]}); give a folder written by save_pretrained"
            ) from None
        model.load_state_dict(pretrained.state_dict())
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
