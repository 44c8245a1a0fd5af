"""The U-Net family: diffusers' ``UNet2DModel``, the DDPM network (Ho et al. 2020).

A preset is a plain dict of ``UNet2DModel`` keyword arguments; ``in_channels`` left out means "take it from
the data" (the CPU presets serve both digits and colour images).  Its blocks are diffusers' resnets,
attentions and samplers inside ``down_blocks``/``mid_block``/``up_blocks``; the time embedding, ``conv_in``
and ``conv_out`` are single-layer modules of the stem.
"""

from __future__ import annotations

import re
from typing import Any

from diffusers import UNet2DModel

from ddpm_lottery.models.families.family import Family
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

PURPOSES = {
    "ddpm-cifar10": "DDPM CIFAR-10 U-Net (Ho et al. 2020), 32x32x3",
    "ddpm-mnist": "DDPM family sized for 28x28 digits",
    "small": "CPU preset, ~1.5M parameters",
    "tiny": "CPU preset for tests and the quickstart, ~0.3M parameters",
}

_BLOCK_PATTERN = re.compile(
    r"^((?:down_blocks|up_blocks)\.\d+\.(?:resnets|attentions|downsamplers|upsamplers)\.\d+"
    r"|mid_block\.(?:resnets|attentions)\.\d+)"
)


class UNetFamily(Family):
    name = "unet"
    class_name = "UNet2DModel"
    presets = PRESETS
    purposes = PURPOSES
    # The settings that override a preset's architecture (and that a brought network fixes itself).
    overrides = (
        "sample_size",
        "block_out_channels",
        "layers_per_block",
        "down_block_types",
        "up_block_types",
        "dropout",
        "norm_num_groups",
    )
    # the layers inside its down, mid and up blocks; the rest is its stem (the time embedding, conv_in,
    # conv_out), a few layers at the two ends
    block_prefixes = ("down_blocks.", "mid_block.", "up_blocks.")
    channel_tickets = True
    folder = "unet"
    pipeline = "DDPMPipeline"

    def model_class(self) -> type:
        return UNet2DModel

    def check(self, kwargs: dict[str, Any], what: str) -> None:
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

    def num_classes(self, config) -> int:
        # a class-conditional U-Net of this tool has K + 1 label rows: the last is the null class of guidance
        rows = int(getattr(config, "num_class_embeds", None) or 0)
        return max(rows - 1, 0)

    def with_classes(self, kwargs, classes):
        # diffusers' own class embedding, a table added to the time embedding: one row per class and the null
        # class of guidance (diffusers adds none of its own, unlike the DiT's)
        return {**kwargs, "num_class_embeds": classes + 1 if classes else None}

    def denoise(self, model, x, t, labels=None):
        # an unconditional U-Net is called exactly as DDPMPipeline calls it
        if labels is None:
            return model(x, t).sample
        return model(x, t, class_labels=labels).sample

    def block_of(self, layer_name: str) -> str:
        """The conventional U-Net block (``down_blocks.1.resnets.0``), or the stem layer's own name (``conv_in``)."""
        match = _BLOCK_PATTERN.match(layer_name)
        return match.group(1) if match else layer_name.split(".")[0]


UNET = UNetFamily()
