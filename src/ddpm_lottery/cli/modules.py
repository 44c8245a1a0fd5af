"""``ddpm-lottery modules``: print a preset's module map in forward-execution order."""

from __future__ import annotations

import argparse

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.utils.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("modules", help="print a preset's module map in forward-execution order")
    parser.add_argument("--preset", default="tiny", help="network preset [default: tiny]")
    parser.add_argument("--granularity", default="block", choices=("block", "layer"))
    parser.add_argument("--include", help="comma-separated shell patterns of weights to prune")
    parser.add_argument("--exclude", help="comma-separated shell patterns of weights to leave dense")
    parser.add_argument("--layer-groups", help="DiT: comma-separated layer groups to prune [default: all]")
    parser.add_argument("--tensors", action="store_true", help="also list every tensor")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads only when the command runs
    from ddpm_lottery.models.families import PRESETS
    from ddpm_lottery.models.networks import build_model
    from ddpm_lottery.pruning.modules import module_map

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    model = build_model(ModelConfig(preset=args.preset), PRESETS[args.preset].get("in_channels") or 1)
    include = tuple(p for p in (args.include or "").split(",") if p)
    exclude = tuple(p for p in (args.exclude or "").split(",") if p)
    groups = tuple(p for p in (args.layer_groups or "").split(",") if p)
    mmap = module_map(model, args.granularity, include, exclude, groups)
    print(
        f"{args.preset}: {len(mmap.modules)} modules ({args.granularity} granularity), "
        f"{sum(m.size for m in mmap.modules):,} prunable weights in {len(mmap.tensor_names)} tensors, "
        "forward-execution order"
    )
    print(f"{'j':>3}  {'module':<34} {'tensors':>7} {'weights':>11}")
    for module in mmap.modules:
        print(f"{module.index:>3}  {module.name:<34} {len(module.tensors):>7} {module.size:>11,}")
        if args.tensors:
            for name, size in zip(module.tensors, module.sizes):
                print(f"{'':>5}  {name:<58} {size:>11,}")
    return 0
