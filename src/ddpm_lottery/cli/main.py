"""The ``ddpm-lottery`` command line.  Flags come from the declarations in :mod:`config`."""

from __future__ import annotations

import argparse
import sys

from ddpm_lottery import __version__
from ddpm_lottery.config.settings import (
    CkaConfig, EvalConfig, FrontierConfig, LotteryConfig, RunConfig, SampleConfig, TuneConfig, add_arguments,
    config_from_args,
)
from ddpm_lottery.utils.errors import UserError


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of settings; flags override it")


def _start_processes(config, args) -> None:
    """Training commands run in every process their launcher was asked for (see launch.py)."""
    from ddpm_lottery.utils.launch import ensure_requested_processes

    ensure_requested_processes(config.runtime.device, args.argv)


def _cmd_train(args) -> int:
    from ddpm_lottery.api import train

    config = config_from_args(RunConfig, args, args.config)
    _start_processes(config, args)
    run = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    _log_command(run)
    return 0


def _cmd_sample(args) -> int:
    from ddpm_lottery.api import sample

    config = config_from_args(SampleConfig, args, args.config)
    sample(args.run, config, args.out, progress=not args.no_progress)
    return 0


def _cmd_presets(args) -> int:
    from ddpm_lottery.config.settings import ModelConfig
    from ddpm_lottery.pruning.costs import layer_flops
    from ddpm_lottery.models.networks import PRESET_PURPOSE, PRESETS, build_model, count_parameters

    print(f"{'preset':<14} {'parameters':>12} {'GMACs/call':>11}  {'input':<10} purpose")
    for name, kwargs in PRESETS.items():
        channels = kwargs.get("in_channels")
        model = build_model(ModelConfig(preset=name), channels or 1)
        size = kwargs["sample_size"]
        shape = f"{size}x{size}x{channels or 'any'}"
        macs = layer_flops(model)[0] / 2e9
        print(f"{name:<14} {count_parameters(model):>12,} {macs:>11.3f}  {shape:<10} {PRESET_PURPOSE[name]}")
    print("(1-channel input where the preset follows the data; MACs of one denoiser call on one image, counted by "
          "torch.utils.flop_counter with attention products)")
    return 0


def _cmd_find_ticket(args) -> int:
    from ddpm_lottery.lottery.loop import search_ticket

    config = config_from_args(LotteryConfig, args, args.config)
    _start_processes(config, args)
    run = search_ticket(config, args.out, progress=not args.no_progress)
    _log_command(run)
    return 0


def _cmd_modules(args) -> int:
    from ddpm_lottery.config.settings import ModelConfig
    from ddpm_lottery.models.networks import PRESETS, build_model
    from ddpm_lottery.pruning.masks import module_map

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
    from ddpm_lottery.reporting.tables import sparsity_table

    print(sparsity_table(args.run, args.level))
    return 0


def _levels_arg(run, level, all_levels) -> list[int]:
    from ddpm_lottery.runs.folders import Run

    return [lv.index for lv in Run.open(run).levels_arg(level, all_levels)]


def _log_command(run) -> None:
    """Append the command line to RUN/commands.log (provenance for reports)."""
    from ddpm_lottery.runs.folders import Run

    Run.open(run).log_command(sys.argv[1:])


def _cmd_evaluate(args) -> int:
    from ddpm_lottery.measures.evaluate import evaluate_levels

    config = config_from_args(EvalConfig, args, args.config)
    evaluate_levels(args.run, config, _levels_arg(args.run, args.level, args.all_levels),
                    progress=not args.no_progress, force=args.force)
    _log_command(args.run)
    return 0


def _cmd_flops(args) -> int:
    from ddpm_lottery.pruning.costs import level_costs
    from ddpm_lottery.runs.folders import Run

    run = Run.open(args.run)
    for level in run.levels_arg(args.level, args.all_levels):
        c = level_costs(level)
        print(f"{args.run} level {level.index}: {c['dense_flops'] / 1e9:.4f} GFLOPs ({c['dense_macs'] / 1e9:.4f} GMACs) "
              f"dense per denoiser call, {c['effective_flops'] / 1e9:.4f} GFLOPs effective "
              f"(−{100 * c['reduction']:.2f} %); {c['counter']}")
        for name, value in c["per_sample_flops"].items():
            print(f"  per sample, {name}: {value['dense'] / 1e9:.2f} → {value['effective'] / 1e9:.2f} GFLOPs")
        print(f"  parameters {c['surviving_parameters']:,} of {c['dense_parameters']:,}; storage "
              f"{c['sparse_bytes']:,} B sparse export vs {c['dense_bytes']:,} B dense ({c['storage_ratio']:.3f}x), "
              f"{c['weights']} weights")
        if args.per_module:
            print(f"  {'j':>3}  {'module':<34} {'dense MFLOPs':>13} {'effective':>11} {'reduction':>9}")
            for m in c["per_module"]:
                print(f"  {m['index']:>3}  {m['name']:<34} {m['dense_flops'] / 1e6:>13.2f} "
                      f"{m['effective_flops'] / 1e6:>11.2f} {100 * m['reduction']:>8.1f}%")
    return 0


def _cmd_tune_range(args) -> int:
    from ddpm_lottery.config.settings import TuneConfig
    from ddpm_lottery.lottery.loop import run_range_tuning

    config = config_from_args(TuneConfig, args, args.config)
    _start_processes(config, args)
    run = run_range_tuning(args.run, config, args.out, progress=not args.no_progress)
    _log_command(run)
    return 0


def _cmd_export(args) -> int:
    from ddpm_lottery.lottery.export import export_level

    export_level(args.run, args.out, args.level, args.weights)
    return 0


def _cmd_compact(args) -> int:
    from ddpm_lottery.runs.folders import Run
    from ddpm_lottery.pruning.channels.groups import compact_level

    run = Run.open(args.run)
    for level in run.levels_arg(args.level, args.all_levels):
        r = compact_level(level)
        print(f"{args.run} level {r['level']} ({r['how']}): removed {r['channels_removed']} of {r['channels_total']} "
              f"channels; parameters {r['parameters']:,} → {r['compact_parameters']:,}; GFLOPs per call "
              f"{r['flops'] / 1e9:.4f} → {r['compact_flops'] / 1e9:.4f} ({r['flops'] / r['compact_flops']:.2f}×); "
              f"outputs differ by at most {r['max_abs_difference']:.2g}; wrote {level.compact_path}")
    return 0


def _cmd_frontier(args) -> int:
    from ddpm_lottery.config.settings import FrontierConfig
    from ddpm_lottery.frontier.sweep import frontier

    config = config_from_args(FrontierConfig, args, args.config)
    frontier(args.runs, config, args.out, progress=not args.no_progress)
    return 0


def _cmd_cka(args) -> int:
    from ddpm_lottery.measures.cka import compare_runs

    config = config_from_args(CkaConfig, args, args.config)
    compare_runs(args.run_a, args.run_b, None if config.level < 0 else config.level, config, out=args.out)
    return 0


def _cmd_report(args) -> int:
    from ddpm_lottery.reporting.report import build_report

    build_report(args.runs, args.out, cka_dirs=args.cka or (), protocol=args.protocol,
                 commands=[f"ddpm-lottery {' '.join(sys.argv[1:])}"])
    return 0


def _cmd_quickstart(args) -> int:
    from ddpm_lottery.study.quickstart import quickstart

    quickstart(args.out, progress=not args.no_progress)
    return 0


def _cmd_study(args) -> int:
    from ddpm_lottery.study.runner import execute_study

    if args.show:
        from ddpm_lottery.study.runner import resolve_study

        print(resolve_study(args.file).read_text(), end="")
        return 0
    execute_study(args.file, args.out, dry_run=args.dry_run, report_only=args.report_only,
                  progress=not args.no_progress, data_dir=args.data_dir, device=args.device)
    return 0


def _cmd_findings(args) -> int:
    from ddpm_lottery.findings.questions import print_findings

    return print_findings(args.path)


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
        description="Iterative magnitude pruning with late rewinding (the paper's Algorithm 1). Strategies: "
                    "unified, global, varying (p + j*q per module, forward order; --order reverse for the "
                    "ablation); controls: --reinit or --strategy random with --control-of RUN. Re-running "
                    "the same command continues a killed search; finished levels are never recomputed; a higher "
                    "--target-sparsity or --max-rounds extends a finished one.")
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

    evaluate = commands.add_parser(
        "evaluate", help="FID and KID of run levels on the standard Inception features",
        description="Generate N images per level and compare their Inception-v3 pool3 features with the training "
                    "set's (cached). Each result is stored beside its level, keyed by its whole protocol, with "
                    "the images it generated.")
    evaluate.add_argument("run", metavar="RUN")
    _add_config_flag(evaluate)
    evaluate.add_argument("--level", type=int, default=None, help="level to evaluate [default: the last finished]")
    evaluate.add_argument("--all-levels", action="store_true", help="evaluate every finished level")
    evaluate.add_argument("--force", action="store_true", help="recompute evaluations already stored")
    evaluate.add_argument("--no-progress", action="store_true")
    add_arguments(evaluate, EvalConfig())
    evaluate.set_defaults(func=_cmd_evaluate)

    flops = commands.add_parser("flops", help="FLOPs, parameters and storage of run levels, dense vs ticket")
    flops.add_argument("run", metavar="RUN")
    flops.add_argument("--level", type=int, default=None, help="[default: the last finished]")
    flops.add_argument("--all-levels", action="store_true")
    flops.add_argument("--per-module", action="store_true", help="print the per-module table")
    flops.set_defaults(func=_cmd_flops)

    tune = commands.add_parser(
        "tune-range", help="fine-tune a level on one range of timesteps (the late network of a stage schedule)",
        description="Train a finished level further on the timesteps of --timestep-range only, keeping its masks, "
                    "from its trained weights or its rewound theta_tau * m. Writes RUN/ranges/<...>/, whose level_00 "
                    "a --schedule names by path, e.g. 600:0=RUN/ranges/<...>/level_00.")
    tune.add_argument("run", metavar="RUN")
    _add_config_flag(tune)
    tune.add_argument("--out", metavar="DIR", help="output run folder [default: RUN/ranges/level_NN-tLOW-HIGH-...]")
    tune.add_argument("--no-progress", action="store_true")
    add_arguments(tune, TuneConfig())
    tune.set_defaults(func=_cmd_tune_range)

    export = commands.add_parser(
        "export", help="write a level as a diffusers DDPMPipeline folder, with its mask and a card",
        description="Write a run level as a DDPMPipeline folder (model_index.json, unet/, scheduler/) that "
                    "DDPMPipeline.from_pretrained loads, pruned weights exactly zero, with mask.safetensors and a "
                    "README card (sparsity, strategy, measured quality, FLOPs, commands). Channel tickets export "
                    "compacted; ddpm_lottery.load_pipeline(DIR) loads them.")
    export.add_argument("run", metavar="RUN")
    export.add_argument("--out", metavar="DIR", required=True, help="the pipeline folder to write")
    export.add_argument("--level", type=int, default=None, help="[default: the last finished]")
    export.add_argument("--weights", default="ema", choices=("ema", "raw"), help="which weights [default: ema]")
    export.set_defaults(func=_cmd_export)

    squeeze = commands.add_parser(
        "compact", help="write a level's physically smaller network (channel tickets, or the channels an "
                        "unstructured mask emptied)",
        description="Compact run levels with Torch-Pruning into smaller networks that compute the same outputs: "
                    "a channel ticket loses its removed channels; an unstructured ticket loses exactly the channels "
                    "no surviving weight reads (and whose norm groups are all dead). Writes compact.safetensors "
                    "and compact.json beside the level; the frontier and stage schedules then run it.")
    squeeze.add_argument("run", metavar="RUN")
    squeeze.add_argument("--level", type=int, default=None, help="[default: the last finished]")
    squeeze.add_argument("--all-levels", action="store_true")
    squeeze.set_defaults(func=_cmd_compact)

    front = commands.add_parser(
        "frontier", help="quality against measured seconds and FLOPs per sample: samplers, tickets, stage schedules",
        description="Place each run's dense model under several samplers, its tickets (unstructured: same seconds, "
                    "fewer FLOPs; channel tickets compacted: both real) and stage schedules on one quality-against-"
                    "cost plot, with the Pareto front. Quality is the first of --measures (stored evaluations are "
                    "reused); seconds are timed here, every network interleaved.")
    front.add_argument("runs", metavar="RUN", nargs="+")
    _add_config_flag(front)
    front.add_argument("--out", metavar="DIR", help="output folder [default: the first RUN/frontier]")
    front.add_argument("--no-progress", action="store_true")
    add_arguments(front, FrontierConfig())
    front.set_defaults(func=_cmd_frontier)

    cka = commands.add_parser("cka", help="CKA similarity of two tickets, layer by layer (the paper's Fig. 1)")
    cka.add_argument("run_a", metavar="RUN_A")
    cka.add_argument("run_b", metavar="RUN_B")
    _add_config_flag(cka)
    cka.add_argument("--out", help="output folder [default: RUN_A/cka/<RUN_B>-levelXX]")
    add_arguments(cka, CkaConfig())
    cka.set_defaults(func=_cmd_cka)

    report = commands.add_parser("report", help="one self-contained HTML report (and a Markdown table) of runs")
    report.add_argument("runs", metavar="RUN", nargs="+")
    report.add_argument("--out", default="report.html", help="HTML file [default: report.html]")
    report.add_argument("--cka", action="append", metavar="DIR", help="a `ddpm-lottery cka` output folder to include")
    report.add_argument("--protocol", help="show the evaluations whose protocol key contains this text (e.g. n2048); "
                                           "default: the protocol that covers the most levels")
    report.set_defaults(func=_cmd_report)

    study = commands.add_parser(
        "study", help="run a declared study (searches, controls, seeds, measures, CKA) and state its findings",
        description="Run the study a study file declares: the dense model, ticket searches, controls, replicates over "
                    "data seeds, every measure of every level with intervals, CKA of ticket pairs with baselines, "
                    "then the findings table. Finished work is reused; a killed study resumes.")
    study.add_argument("file", help="study file (TOML or YAML with a [study] table), or the name of a shipped study: "
                                    "quickstart, cpu-digits")
    study.add_argument("--out", metavar="DIR", help="study folder [default: runs/<study name>]")
    only = study.add_mutually_exclusive_group()  # each of these runs nothing, and each does something else
    only.add_argument("--show", action="store_true", help="print the study file (e.g. to copy a shipped one) and exit")
    only.add_argument("--dry-run", action="store_true",
                      help="print the plan and its estimated cost on this device, and run nothing")
    only.add_argument("--report-only", action="store_true",
                      help="write the findings and the report of what is finished, and run nothing (e.g. while "
                           "other processes run the study)")
    study.add_argument("--data-dir", metavar="DIR", help="where the study's dataset files are (every run reads them)")
    study.add_argument("--device", help="cpu, cuda, cuda:N or auto [default: the study file's, else auto]")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    study.set_defaults(func=_cmd_study)
    found = commands.add_parser("findings", help="print the findings table of a study or run folder")
    found.add_argument("path", help="a study folder (the --out of ddpm-lottery study) or a run folder")
    found.set_defaults(func=_cmd_findings)

    presets = commands.add_parser("presets", help="list the network presets and their sizes")
    presets.set_defaults(func=_cmd_presets)

    quick = commands.add_parser(
        "quickstart", help="the smallest shipped study on the embedded digits, ending in its findings and a report",
        description="The same as `ddpm-lottery study quickstart --out runs/quickstart`: a dense model, unified "
                    "tickets at 50 and 87.5 % sparsity, their re-init control, every level measured with intervals, "
                    "the findings table and OUT/report.html (about 5 minutes on 2 idle CPU cores). Finished work is "
                    "reused when it runs "
                    "again. To change its settings, copy its study file (ddpm-lottery study quickstart --show) and "
                    "run ddpm-lottery study on the copy.")
    quick.add_argument("--out", default="runs/quickstart", metavar="DIR", help="output folder [default: runs/quickstart]")
    quick.add_argument("--no-progress", action="store_true", help="no progress bar")
    quick.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
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

