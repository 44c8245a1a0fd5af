"""The lottery's entry points: training a dense model, a ticket search or one of its controls, a range
fine-tuning.  Each returns its run folder; :mod:`ddpm_lottery.api` wraps them in result objects."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from ddpm_lottery.config import LotteryConfig, RunConfig, apply_overrides, config_hash, non_default
from ddpm_lottery.lottery.controls import ControlBranch, control_config, control_kind
from ddpm_lottery.lottery.export import write_pipeline_view
from ddpm_lottery.lottery.levels import LevelTrainer
from ddpm_lottery.lottery.range_tuning import RangeTuning
from ddpm_lottery.lottery.search import Lottery, validate
from ddpm_lottery.pruning.masks import full_masks
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError


def train_dense(
    config: RunConfig, out: str | Path | None = None, *, resume: bool = False, progress: bool = True, log=print
) -> Path:
    """Train a DDPM into a run folder (a run with level 0 only); a finished run is left as it is."""
    run_dir = Path(out) if out is not None else Path("runs") / f"train-{config_hash(config)}"
    job = LevelTrainer(config, run_dir, progress=progress, log=log)
    existed = Run.is_run(run_dir)
    run = job.open_run()
    try:
        level = run.level(0)
        if level.finished:
            log(f"{run_dir} is already finished (run {run.hash}); nothing to do")
            return run_dir
        if existed and level.checkpoints.exists() and not resume:
            raise UserError(
                f"{run_dir} holds an unfinished run; pass --resume to continue it, or choose a new --out folder"
            )
        trainer = job.trainer_for(level, None, "train")
        if resume and trainer.resume():
            log(f"resuming {run_dir} at step {trainer.step}")
        if job.processes.is_main:
            params = sum(p.numel() for p in trainer.parameters)
            network = (
                f"pretrained {config.model.pretrained}"
                if config.model.pretrained
                else f"config {config.model.unet_config}"
                if config.model.unet_config
                else f"preset {config.model.preset}"
            )
            log(
                f"training {network} ({params:,} parameters) on {trainer.images.name} "
                f"({len(trainer.images.images):,} images from {trainer.images.source}) for {config.train.steps} "
                f"steps, batch {config.train.batch_size}, {trainer.processes.world_size} process(es) on "
                f"{trainer.device}"
            )
        job.train_level(trainer, 0, full_masks(trainer.model, job.mmap.tensor_names), [], "dense", {})
        job.write_summary()
        if job.processes.is_main:
            write_pipeline_view(run)  # DDPMPipeline.from_pretrained(RUN) loads the trained model
    finally:
        job.close_run()
    return run_dir


def search_ticket(
    config: LotteryConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log=print,
    after_level: Callable[[Level], None] | None = None,
) -> Path:
    """Run a ticket search, or a control branch when --reinit / --strategy random is given; returns
    its run folder. ``after_level`` is called with each level this call trains, once it is stored, while the
    search still holds its run's lock (a study measures it there, so its findings grow level by level)."""
    validate(config)
    kind = control_kind(config)
    if kind:
        source = Run.open(config.prune.control_of)
        branch = control_config(config, source)
        if kind == "reinit" and branch.train.seed_init == source.config.train.seed_init:
            raise UserError(
                "--reinit needs new initial weights: pass a --seed-init different from the ticket "
                f"run's ({source.config.train.seed_init})"
            )
        out = Path(out) if out else source.branch_path(kind, config_hash(branch))
        return ControlBranch(branch, source, out, progress=progress, log=log, after_level=after_level).run_search()
    out = Path(out) if out else Path("runs") / f"lottery-{config_hash(config)}"
    return Lottery(config, out, progress=progress, log=log, after_level=after_level).run_search()


def run_range_tuning(
    run_dir: str | Path, config, out: str | Path | None = None, *, progress: bool = True, log=print
) -> Path:
    """``ddpm-lottery tune-range``: the source run's config with the given training settings changed;
    returns the range run's folder."""
    source = Run.open(run_dir)
    if source.kind == "range":
        raise UserError(f"{source.root} is itself a range fine-tuning; tune the run it came from")
    index = source.last_level().index if config.tune.level == -1 else config.tune.level
    if not config.train.timestep_range:
        raise UserError("give --timestep-range LOW,HIGH: the timesteps the level is fine-tuned for (e.g. 0,600)")
    tuned = copy.deepcopy(source.config)
    if not isinstance(tuned, LotteryConfig):
        tuned = LotteryConfig(**{k: getattr(tuned, k) for k in ("data", "model", "diffusion", "train", "runtime")})
    apply_overrides(tuned, {f"train.{k}": v for k, v in non_default(config.train).items()}, source="tune-range")
    tuned.runtime = copy.deepcopy(config.runtime)  # where and how this session computes and logs
    low, high = config.train.timestep_range
    out = Path(out) if out else source.range_path(index, low, high, config.tune.start, config_hash(tuned))
    return RangeTuning(tuned, source, index, config.tune.start, out, progress=progress, log=log).run_tuning()
