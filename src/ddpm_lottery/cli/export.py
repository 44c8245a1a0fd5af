"""``ddpm-lottery export``: write a level as a diffusers DDPMPipeline folder, with its mask and a card."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="write a level as a diffusers folder (a DDPMPipeline; a DiT's transformer/), with its mask and a card",
        description="Write a run level as a DDPMPipeline folder (model_index.json, unet/, scheduler/) that "
        "DDPMPipeline.from_pretrained loads, pruned weights exactly zero, with mask.safetensors and a "
        "README card (sparsity, strategy, measured quality, FLOPs, commands). Channel tickets export "
        "compacted; ddpm_lottery.load_pipeline(DIR) loads them. A DiT exports as transformer/ and "
        "scheduler/ (DiTTransformer2DModel.from_pretrained and a scheduler loop, shown in the card): "
        "DiTPipeline needs a VAE.",
    )
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--out", metavar="DIR", required=True, help="the pipeline folder to write")
    parser.add_argument("--level", type=int, default=None, help="[default: the last finished]")
    parser.add_argument("--weights", default="ema", choices=("ema", "raw"), help="which weights [default: ema]")
    parser.add_argument(
        "--force", action="store_true", help="replace an export of another level or run already in --out"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.lottery.export import export_level

    export_level(args.run, args.out, args.level, args.weights, force=args.force)
    return 0
