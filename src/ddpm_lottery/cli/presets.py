"""``ddpm-lottery presets``: list the network presets and their sizes."""

from __future__ import annotations

import argparse

from ddpm_lottery.config import ModelConfig


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("presets", help="list the network presets and their sizes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.models.families import PRESET_PURPOSE, PRESETS
    from ddpm_lottery.models.networks import build_model, count_parameters
    from ddpm_lottery.pruning.costs import layer_flops

    print(f"{'preset':<14} {'parameters':>12} {'GMACs/call':>11}  {'input':<10} purpose")
    for name, kwargs in PRESETS.items():
        channels = kwargs.get("in_channels")
        model = build_model(ModelConfig(preset=name), channels or 1)
        size = kwargs["sample_size"]
        shape = f"{size}x{size}x{channels or 'any'}"
        macs = layer_flops(model)[0] / 2e9
        print(f"{name:<14} {count_parameters(model):>12,} {macs:>11.3f}  {shape:<10} {PRESET_PURPOSE[name]}")
    print(
        "(1-channel input where the preset follows the data; MACs of one denoiser call on one image, counted by "
        "torch.utils.flop_counter with attention products)"
    )
    return 0
