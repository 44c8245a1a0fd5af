"""One efficiency frontier: quality against measured seconds (and FLOPs) per sample.  Points, per run:

* the dense model (level 0) with each of ``dense_samplers`` (DDPM 1000, DDIM 10/20/50/100,
  DPM-Solver++ 10/20 by default);
* every pruned level with each of ``ticket_samplers``.  An unstructured ticket runs the kernels ``--kernels``
  picks (with PyTorch's dense ones only its effective FLOPs fall, not its seconds).  A channel ticket runs
  compacted: its seconds and FLOPs are both real;
* stage schedules: those of ``sweep_levels`` (dense early / sparse late at each switch step, and the reverse
  assignment as the control) and any schedule already evaluated in ``RUN/schedules``.

Quality is one measure of the evaluation (its value and interval, lower is better), stored beside each level or
schedule like any evaluation and reused.  Seconds per sample are ``calls x (median seconds of one call at
timing_batch images) / timing_batch``, every network timed interleaved on this machine.  FLOPs per sample count
one call per step (two with guidance).  A point is on the Pareto front when no other point is at most as slow (or
as costly) and at most as bad, and better in one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddpm_lottery.config import EvalConfig, FrontierConfig, SamplingConfig, check_config, to_dict
from ddpm_lottery.kernels.install import install_kernels, kernel_record
from ddpm_lottery.lottery.costs import stored_costs
from ddpm_lottery.lottery.stages import StagedLevel, calls_per_stage, stage_network
from ddpm_lottery.measures.evaluate import MEASURES, Evaluator
from ddpm_lottery.measures.stats import paired_difference
from ddpm_lottery.models.conditioning import guidance_for, run_classes
from ddpm_lottery.models.diffusion import SAMPLERS, sampling_scheduler
from ddpm_lottery.pruning.costs import layer_flops, time_denoisers
from ddpm_lottery.runs.layout import level_name
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError, require_type
from ddpm_lottery.utils.figures import frontier_figure
from ddpm_lottery.utils.files import make_dirs, write_json, write_text
from ddpm_lottery.utils.launch import machine_load, resolve_device


@dataclass
class Point:
    label: str
    kind: str  # dense | ticket | channel | schedule | schedule control
    run: str
    sampler: str
    steps: int
    level: int | None = None
    schedule: str | None = None
    value: float = float("nan")
    interval: tuple[float, float] = (float("nan"), float("nan"))
    protocol: str = ""
    seconds_per_sample: float = float("nan")
    flops_per_sample: float = float("nan")  # what the kernels execute
    effective_flops_per_sample: float = float("nan")  # what a sparse kernel would execute
    flop_ratio: float = float("nan")  # the dense model's FLOPs per call over this network's (effective)
    pareto_seconds: bool = False
    pareto_flops: bool = False
    sparsity: float | None = None
    kernels: str = ""  # which kernels the timed networks ran
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def parse_sampler(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise UserError(
            f"sampler point {text!r} is not SAMPLER:STEPS with SAMPLER one of {', '.join(SAMPLERS)} (e.g. ddim:20)"
        )
    return name, int(steps)


def _eval_config(config: FrontierConfig, sampler: str, steps: int, schedule: str | None) -> EvalConfig:
    sampling = SamplingConfig(**{f: getattr(config.sampling, f) for f in config.sampling.__dataclass_fields__})
    sampling.sampler, sampling.sampling_steps, sampling.schedule = sampler, steps, schedule
    out = EvalConfig()
    out.eval, out.sampling, out.runtime = config.eval, sampling, config.runtime
    return out


def _schedule_kind(staged) -> str:
    """A stored schedule outside the sweep: a "schedule control" when its first (noisiest) range runs a sparser
    network than its last, the reverse of the assignment the sweep tests; else a "schedule"."""

    def sparsity(level) -> float:
        metrics = level.metrics()
        return metrics.get("channel_sparsity", metrics.get("sparsity", 0.0))

    first, last = sparsity(staged.levels[0]), sparsity(staged.levels[-1])
    return "schedule control" if first > last else "schedule"


def _sweep(run: Run, config: FrontierConfig) -> list[tuple[str, str]]:
    """(schedule, kind) pairs of the switch-step sweep."""
    levels = config.frontier.sweep_levels
    if not levels:
        return []
    if len(levels) != 2:
        raise UserError(f"--sweep-levels takes two levels, DENSE,SPARSE; got {','.join(map(str, levels))}")
    finished = run.finished_levels()
    for level in (level for level in levels if level not in finished):  # its own flag, not the schedules'
        raise UserError(f"--sweep-levels names level {level}, which {run.root} has not finished (finished: {finished})")
    total = run.config.diffusion.num_train_timesteps
    dense, sparse = levels
    out = []
    for switch in config.frontier.switch_steps:
        if not 0 < switch < total:
            raise UserError(f"--switch-steps {switch} is outside the reverse process (1..{total - 1})")
        first, second = level_name(dense), level_name(sparse)
        out.append((f"{total}:{switch}={first},{switch}:0={second}", "schedule"))
        out.append((f"{total}:{switch}={second},{switch}:0={first}", "schedule control"))
    return out


def frontier(
    runs: list[str | Path],
    config: FrontierConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log=print,
    extractor=None,
) -> dict:
    """Measure every point (reusing stored evaluations), time every network, write the table and figure."""
    config = check_config(require_type(config or FrontierConfig(), FrontierConfig, "frontier's config"))
    measure = config.eval.measures[0]
    if measure == "loss":
        raise UserError(
            "the frontier compares samplers, and the held-out loss does not sample: give --measures "
            "inception or --measures domain"
        )
    if not runs:
        raise UserError("give at least one run folder")
    dense_points = [parse_sampler(s) for s in config.frontier.dense_samplers]
    ticket_points = [parse_sampler(s) for s in config.frontier.ticket_samplers]
    device = resolve_device(config.runtime.device)
    opened = [Run.open(r) for r in runs]
    folder = opened[0].frontier_folder(Path(out) if out else None)

    # what to measure: (point, level-like object)
    planned: list[tuple[Point, Level]] = []
    for run in opened:
        finished = run.finished_levels()
        if 0 not in finished:
            raise UserError(f"{run.root} has no finished dense level 0 to compare against")
        for sampler, steps in dense_points:
            planned.append(
                (
                    Point(f"dense {sampler} {steps}", "dense", str(run.root), sampler, steps, level=0, sparsity=0.0),
                    run.level(0),
                )
            )
        wanted = list(config.frontier.levels) or [i for i in finished if i > 0]
        for index in wanted:
            if index not in finished:
                raise UserError(f"{run.root} has no finished level {index} (finished: {', '.join(map(str, finished))})")
            level = run.level(index)
            metrics = level.metrics()
            kind = "channel" if level.compact_path.exists() else "ticket"
            sparsity = metrics.get("channel_sparsity", metrics["sparsity"])
            what = "channels" if kind == "channel" else "weights"
            for sampler, steps in ticket_points:
                planned.append(
                    (
                        Point(
                            f"level {index} ({sparsity:.1%} {what}) {sampler} {steps}",
                            kind,
                            str(run.root),
                            sampler,
                            steps,
                            level=index,
                            sparsity=sparsity,
                        ),
                        level,
                    )
                )
        schedules = _sweep(run, config)
        stored = sorted({r.get("schedule") for d in run.schedules_dir.glob("*/eval") for r in _records(d)} - {None})
        schedules += [(s, _schedule_kind(StagedLevel(run, s))) for s in stored if s not in {x for x, _ in schedules}]
        for schedule, kind in schedules:
            staged = StagedLevel(run, schedule)
            for sampler, steps in ticket_points:
                planned.append(
                    (
                        Point(
                            f"{kind} {staged.schedule} {sampler} {steps}",
                            kind,
                            str(run.root),
                            sampler,
                            steps,
                            schedule=staged.schedule,
                        ),
                        staged,
                    )
                )

    # quality
    evaluators: dict[tuple, Evaluator] = {}
    records: dict[int, dict] = {}
    for point, level in planned:
        key = (point.sampler, point.steps, point.schedule)
        if key not in evaluators:
            evaluators[key] = Evaluator(
                _eval_config(config, point.sampler, point.steps, point.schedule),
                progress=progress,
                log=log,
                extractor=extractor,
            )
            if extractor is None and measure == "inception":
                extractor = evaluators[key].extractor()  # one Inception network for every point
        record = evaluators[key].measure(level, measure)
        point.value, point.interval, point.protocol = record["value"], tuple(record["interval"]), record["label"]
        records[id(point)] = record

    # networks: time each once, count its FLOPs once
    networks, flops, effective, kernel_reports = {}, {}, {}, {}

    sparse_kernels = config.runtime.kernels != "dense" and device.type == "cpu"

    def network_key(level: Level) -> str:
        # an unstructured ticket with dense kernels computes as the dense architecture: it is timed as level 0;
        # with the sparse kernels (--kernels auto or sparse) it is timed as itself
        timed_as = level.index if level.compact_path.exists() or sparse_kernels else 0
        return f"{level.run.root}::{timed_as}"

    for _point, level in planned:
        for member in level.levels if isinstance(level, StagedLevel) else [level]:
            key = network_key(member)
            if key not in networks:
                timed = member.run.level(int(key.rsplit("::", 1)[1]))
                networks[key] = stage_network(timed, config.sampling.weights)
                kernel_reports[key] = install_kernels(networks[key], config.runtime, log=log, what=timed.label())
                flops[key] = layer_flops(networks[key])[0]
            if member.compact_path.exists() or member.index == 0:
                effective[_level_key(member)] = flops[key]
            else:  # what a sparse kernel would execute: each layer's FLOPs times its density
                effective[_level_key(member)] = stored_costs(member)["effective_flops"]
    log(
        f"timing {len(networks)} networks at batch {config.frontier.timing_batch}, {config.frontier.timing_repeats} "
        f"interleaved calls each, on {device}"
    )
    seconds = time_denoisers(networks, config.frontier.timing_batch, config.frontier.timing_repeats, device)
    batch = config.frontier.timing_batch
    # other work on the machine slows every network alike (the calls are interleaved), so the ratios hold;
    # the absolute seconds do not, and the record says how busy the machine was
    machine = machine_load()
    load = machine.load

    dense_call_flops = {str(r.root): flops[network_key(r.level(0))] for r in opened}
    for point, level in planned:
        scheduler = sampling_scheduler(level.run.config.diffusion, point.sampler, point.steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        if isinstance(level, StagedLevel):
            members = list(zip(level.levels, calls_per_stage(level.stages, timesteps)))
        else:
            members = [(level, len(timesteps))]
        guidance = guidance_for(config.sampling, run_classes(level.run.config))
        if guidance is not None:  # guidance at s other than 0 and 1 runs every image through the network twice
            members = [(m, calls * guidance.passes) for m, calls in members]
        point.seconds_per_sample = sum(calls * seconds[network_key(m)] / batch for m, calls in members)
        point.flops_per_sample = sum(calls * flops[network_key(m)] for m, calls in members)
        point.effective_flops_per_sample = sum(calls * effective[_level_key(m)] for m, calls in members)
        calls = sum(c for _, c in members)
        point.flop_ratio = dense_call_flops[point.run] * calls / point.effective_flops_per_sample
        point.extra = {
            "calls": calls,
            "networks": [
                {
                    "level": m.index,
                    "calls": c,
                    "seconds_per_call": seconds[network_key(m)],
                    "kernels": kernel_record(networks[network_key(m)], kernel_reports[network_key(m)])["kernels"],
                }
                for m, c in members
            ],
        }
        point.kernels = "; ".join(sorted({n["kernels"] for n in point.extra["networks"]}))
    points = [p for p, _ in planned]
    _mark_pareto(points, "seconds_per_sample", "pareto_seconds")
    _mark_pareto(points, "effective_flops_per_sample", "pareto_flops")

    reference = {p.run: p for p in points if p.kind == "dense" and p.sampler == "ddpm"}
    _compare_to_dense(points, records, reference, config.eval.confidence)
    make_dirs(folder.dir)
    how = (
        f"{measure} ({points[0].protocol.split(',')[0] if points else ''}); seconds: median of "
        f"{config.frontier.timing_repeats} interleaved calls at batch {batch} on {device}, "
        f"{torch.get_num_threads()} threads, --kernels {config.runtime.kernels}"
        + ("" if load is None else f", machine load {load:.1f} on {machine.cores} cores")
    )
    result = {
        "measure": measure,
        "how": how,
        "points": [p.as_dict() for p in points],
        "device": str(device),
        "timing_batch": batch,
        "machine_load": load,
        "settings": to_dict(config),
    }
    write_json(folder.record, result)
    table = markdown(points, reference, how, config.eval.confidence)
    write_text(folder.table, table)
    frontier_figure(points, MEASURES[measure].label, how, folder.figure)
    log(table)
    log(f"wrote {folder.table}, {folder.figure} and {folder.record}")
    return result


def _compare_to_dense(
    points: list[Point], records: dict[int, dict], reference: dict[str, Point], confidence: float
) -> None:
    """Each point's quality minus the dense model's, with the paired-bootstrap interval and a verdict:
    against the dense model with the same sampler and steps (what pruning costs), and against dense DDPM
    (what pruning and fewer steps together cost).  Image i of every point comes from the same noise and the
    resamples are the same, so the pairs are paired."""
    dense = {(p.run, p.sampler, p.steps): p for p in points if p.kind == "dense"}
    for p in points:
        for name, other in (
            ("vs_dense_same_sampler", dense.get((p.run, p.sampler, p.steps))),
            ("vs_dense_ddpm", reference.get(p.run)),
        ):
            if other is None or other is p or id(other) not in records or id(p) not in records:
                continue
            first, second = records[id(p)], records[id(other)]
            if len(first["replicates"]) != len(second["replicates"]):
                continue
            difference = paired_difference([(first, second)], confidence)
            p.extra[name] = {**difference.as_dict(), "against": other.label}


def _cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    low, high = entry["interval"]
    return f"{entry['difference']:+.3g} [{low:+.3g}, {high:+.3g}] {entry['verdict']}"


def _level_key(level: Level) -> str:
    return f"{level.run.root}::{level.index}"


def _records(folder: Path) -> list[dict]:
    records = []
    for path in folder.glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def _mark_pareto(points: list[Point], cost: str, flag: str) -> None:
    for p in points:
        dominated = any(
            getattr(q, cost) <= getattr(p, cost)
            and q.value <= p.value
            and (getattr(q, cost) < getattr(p, cost) or q.value < p.value)
            for q in points
            if q is not p
        )
        setattr(p, flag, not dominated)


def markdown(points: list[Point], reference: dict[str, Point], how: str, confidence: float = 0.95) -> str:
    baseline = next(iter(reference.values()), None)
    against = f"dense ddpm {baseline.steps}" if baseline else "dense ddpm"
    lines = [
        f"Quality against cost ({how}). Lower is better; × is the measured speed-up over the run's dense model "
        f"with DDPM ({against}); the FLOP ratio is the physical limit of a network's speed-up "
        "per call over the dense model (effective FLOPs for unstructured tickets: a layer's FLOPs times its density). "
        "The kernels column says which ran.",
        "",
        "The two difference columns are this point's quality minus the dense model's (with the same sampler and "
        f"steps, and with DDPM), paired-bootstrap {confidence:.0%} intervals, and whether that is better, worse or "
        "not separable.",
        "",
        f"| point | quality [{confidence:.0%} interval] | s / sample | × vs {against} | GFLOPs / sample | FLOP ratio | "
        f"− dense, same sampler | − {against} | Pareto | kernels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p.run, p.seconds_per_sample)):
        ref = reference.get(p.run)
        speed = f"{ref.seconds_per_sample / p.seconds_per_sample:.1f}×" if ref else "–"
        front = " ".join(x for x, on in (("time", p.pareto_seconds), ("FLOPs", p.pareto_flops)) if on) or ""
        lines.append(
            f"| {p.label} | {p.value:.4g} [{p.interval[0]:.4g}, {p.interval[1]:.4g}] | "
            f"{p.seconds_per_sample:.4g} | {speed} | {p.effective_flops_per_sample / 1e9:.3g} | "
            f"{p.flop_ratio:.2f}× | {_cell(p.extra.get('vs_dense_same_sampler'))} | "
            f"{_cell(p.extra.get('vs_dense_ddpm'))} | {front} | {p.kernels or '–'} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["Point", "frontier", "markdown", "parse_sampler"]
