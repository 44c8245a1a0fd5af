"""The ``ddpm-lottery`` command line.  Flags come from the declarations in :mod:`config`."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import LotteryConfig, RunConfig, SampleConfig, add_arguments, config_from_args
from .errors import UserError


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of settings; flags override it")


def _cmd_train(args) -> int:
    from .api import train

    config = config_from_args(RunConfig, args, args.config)
    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    return 0


def _cmd_sample(args) -> int:
    from .api import sample

    config = config_from_args(SampleConfig, args, args.config)
    sample(args.run, config, args.out, progress=not args.no_progress)
    return 0


def _cmd_presets(args) -> int:
    from .config import ModelConfig
    from .networks import PRESET_PURPOSE, PRESETS, build_model, count_parameters

    print(f"{'preset':<14} {'parameters':>12}  {'input':<10} purpose")
    for name, kwargs in PRESETS.items():
        channels = kwargs.get("in_channels")
        model = build_model(ModelConfig(preset=name), channels or 1)
        size = kwargs["sample_size"]
        shape = f"{size}x{size}x{channels or 'any'}"
        print(f"{name:<14} {count_parameters(model):>12,}  {shape:<10} {PRESET_PURPOSE[name]}")
    print("(parameter counts for 1-channel input where the preset follows the data)")
    return 0


def _cmd_find_ticket(args) -> int:
    from .lottery import find_ticket

    config = config_from_args(LotteryConfig, args, args.config)
    find_ticket(config, args.out, progress=not args.no_progress)
    return 0


def _cmd_modules(args) -> int:
    from .config import ModelConfig
    from .networks import PRESETS, build_model
    from .pruning import module_map

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    model = build_model(ModelConfig(preset=args.preset), PRESETS[args.preset].get("in_channels") or 1)
    include = tuple(p for p in (args.include or "").split(",") if p)
    exclude = tuple(p for p in (args.exclude or "").split(",") if p)
    mmap = module_map(model, args.granularity, include, exclude)
    print(f"{args.preset}: {len(mmap.modules)} modules ({args.granularity} granularity), "
          f"{sum(m.size for m in mmap.modules):,} prunable weights in {len(mmap.tensor_names)} tensors, "
          "forward-execution order")
    print(f"{'j':>3}  {'module':<34} {'tensors':>7} {'weights':>11}")
    for module in mmap.modules:
        print(f"{module.index:>3}  {module.name:<34} {len(module.tensors):>7} {module.size:>11,}")
        if args.tensors:
            for name, size in zip(module.tensors, module.sizes):
                print(f"{'':>5}  {name:<58} {size:>11,}")
    return 0


def _cmd_sparsity(args) -> int:
    from .report_tables import sparsity_table

    print(sparsity_table(args.run, args.level))
    return 0


def _cmd_quickstart(args) -> int:
    from .quickstart import quickstart

    path = quickstart(args.out, steps=args.steps, num_samples=args.num_samples, preset=args.preset,
                      dataset=args.dataset, data_dir=args.data_dir, progress=not args.no_progress)
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-lottery", description="Find, measure and use winning lottery tickets in diffusion models.")
    parser.add_argument("--version", action="version", version=f"ddpm-lottery {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a DDPM into a run folder",
                                description="Train a DDPM. A killed run continues with --resume.")
    _add_config_flag(train)
    train.add_argument("--out", metavar="RUN", help="run folder [default: runs/train-<config hash>]")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(train, RunConfig())
    train.set_defaults(func=_cmd_train)

    sample = commands.add_parser("sample", help="generate images from a run",
                                 description="Write a PNG grid (and .npz on request) of samples from a run.")
    sample.add_argument("run", metavar="RUN", help="a training run folder")
    _add_config_flag(sample)
    sample.add_argument("--out", metavar="DIR", help="output folder [default: RUN/samples/<sampler>-<steps>...]")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(sample, SampleConfig())
    sample.set_defaults(func=_cmd_sample)

    ticket = commands.add_parser(
        "find-ticket", help="find winning tickets by iterative magnitude pruning with rewinding",
        description="Iterative magnitude pruning with late rewinding (GUIDE §1, Algorithm 1). Strategies: "
                    "unified, global, varying (p + j*q per module, forward order; --order reverse for the "
                    "ablation); controls: --reinit or --strategy random with --control-of RUN. Re-running "
                    "the same command continues a killed search; finished levels are never recomputed.")
    _add_config_flag(ticket)
    ticket.add_argument("--out", metavar="RUN", help="run folder [default: runs/lottery-<config hash>, "
                                                      "controls: RUN/branches/<control>-<hash>]")
    ticket.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_arguments(ticket, LotteryConfig())
    ticket.set_defaults(func=_cmd_find_ticket)

    modules = commands.add_parser("modules", help="print a preset's module map in forward-execution order")
    modules.add_argument("--preset", default="tiny", help="network preset [default: tiny]")
    modules.add_argument("--granularity", default="block", choices=("block", "layer"))
    modules.add_argument("--include", help="comma-separated shell patterns of weights to prune")
    modules.add_argument("--exclude", help="comma-separated shell patterns of weights to leave dense")
    modules.add_argument("--tensors", action="store_true", help="also list every tensor")
    modules.set_defaults(func=_cmd_modules)

    sparsity = commands.add_parser("sparsity", help="print the per-module sparsity table of a ticket run")
    sparsity.add_argument("run", metavar="RUN")
    sparsity.add_argument("--level", type=int, default=None, help="level [default: the last finished]")
    sparsity.set_defaults(func=_cmd_sparsity)

    presets = commands.add_parser("presets", help="list the network presets and their sizes")
    presets.set_defaults(func=_cmd_presets)

    quick = commands.add_parser("quickstart", help="the whole study on the embedded data, ending in a report",
                                description="Train on the embedded digits, sample, and write an HTML report.")
    quick.add_argument("--out", default="runs/quickstart", metavar="DIR", help="output folder [default: runs/quickstart]")
    quick.add_argument("--steps", type=int, default=1500, help="training steps [default: 1500]")
    quick.add_argument("--num-samples", type=int, default=64, help="samples in the grid [default: 64]")
    quick.add_argument("--preset", default="tiny", help="network preset [default: tiny]")
    quick.add_argument("--dataset", default="embedded", help="dataset [default: embedded]")
    quick.add_argument("--data-dir", default=None, help="dataset folder, for datasets other than embedded")
    quick.add_argument("--no-progress", action="store_true", help="no progress bars")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ddpm-lottery: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ddpm-lottery: interrupted; finished work is kept, continue with --resume", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

