"""The lottery loop: iterative magnitude pruning with late rewinding (GUIDE §1, Algorithm 1).

Level 0 trains the dense network for i steps and saves theta_tau at step tau = f * i.  Level L
prunes level L-1's trained weights with the chosen strategy, rewinds the survivors to theta_tau,
resets Adam and the EMA, and trains from step tau to step i: the learning rate and the data order
are functions of the step, so they are restored exactly.  A finished level (its ``metrics.json``)
is never recomputed; a killed level resumes from its latest checkpoint.

Run folder::

    RUN/config.json  RUN/modules.json (module map, forward order)  RUN/rewind/weights.safetensors
    RUN/level_00/ mask.safetensors (bit-packed)  weights.safetensors  ema.safetensors
                  metrics.json  samples.png  [checkpoints/ while the level runs]
    RUN/level_01/ ...
    RUN/summary.json  RUN/status.json
    RUN/branches/<control>/level_XX/ ...   (random re-init and random-mask controls)
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import torch

from .config import LotteryConfig, config_hash, from_dict, non_default
from .data import from_model_range
from .diffusion import sample as run_sampler
from .errors import UserError
from .figures import save_grid
from .pruning import (
    MaskedTraining, ModuleMap, PruneSettings, count_kept, count_total, full_masks, load_masks, module_map,
    plan_units, prune_round, random_masks, save_masks, simulate_sparsity,
)
from .runs import load_tensors, prepare_run_dir, read_json, replace_dir, save_tensors, write_json
from .training import StepHooks, Trainer, load_run_images


def level_dir(run_dir: Path, level: int) -> Path:
    return run_dir / f"level_{level:02d}"


def settings_of(config: LotteryConfig) -> PruneSettings:
    pc = config.prune
    return PruneSettings(prune_ratio=pc.prune_ratio, ratio_increment=pc.ratio_increment, order=pc.order,
                         max_round_ratio=pc.max_round_ratio, min_module_density=pc.min_module_density)


def validate(config: LotteryConfig) -> None:
    pc = config.prune
    if not 0 < pc.prune_ratio < 1:
        raise UserError(f"--prune-ratio must be in (0, 1), got {pc.prune_ratio}")
    if not 0 < pc.target_sparsity < 1:
        raise UserError(f"--target-sparsity must be in (0, 1), got {pc.target_sparsity}")
    if pc.ratio_increment < 0:
        raise UserError(f"--ratio-increment must be ≥ 0, got {pc.ratio_increment}")
    if not 0 <= pc.rewind_fraction < 1:
        raise UserError(f"--rewind-fraction must be in [0, 1), got {pc.rewind_fraction}")
    if not 0 < pc.max_round_ratio <= 1:
        raise UserError(f"--max-round-ratio must be in (0, 1], got {pc.max_round_ratio}")
    if not 0 <= pc.min_module_density < 1:
        raise UserError(f"--min-module-density must be in [0, 1), got {pc.min_module_density}")
    if pc.max_rounds <= 0:
        raise UserError(f"--max-rounds must be positive, got {pc.max_rounds}")
    if pc.strategy == "random" and not pc.control_of:
        raise UserError("--strategy random is a control: give --control-of RUN, the ticket run whose "
                        "per-tensor sparsities it copies")
    if pc.reinit and not pc.control_of:
        raise UserError("--reinit is a control: give --control-of RUN, the ticket run whose masks it re-uses")
    if pc.reinit and pc.strategy == "random":
        raise UserError("choose one control: --reinit or --strategy random, not both")


def rewind_step(config: LotteryConfig) -> int:
    return int(round(config.prune.rewind_fraction * config.train.steps))


class _SaveRewind(StepHooks):
    """Saves theta_tau when level 0 reaches step tau (written once, atomically)."""

    def __init__(self, path: Path, tau: int):
        self.path, self.tau = path, tau

    def after_step(self, trainer: Trainer, step: int) -> None:
        if trainer.step == self.tau and not self.path.exists() and trainer.processes.is_main:
            save_tensors(self.path, trainer.weights(), {"step": str(self.tau)})


# ----------------------------------------------------------------------------------------------


def level_metrics(level: int, masks, mmap: ModuleMap, total_params: int, summary: dict, schedule: list[dict],
                  config: LotteryConfig, wall_time: float, extra: dict | None = None) -> dict:
    kept, prunable = count_kept(masks), count_total(masks)
    per_tensor = {n: 1 - int(masks[n].sum()) / masks[n].numel() for n in mmap.tensor_names}
    per_module = []
    for module in mmap.modules:
        m_kept = sum(int(masks[n].sum()) for n in module.tensors)
        per_module.append({"index": module.index, "name": module.name, "size": module.size, "kept": m_kept,
                           "sparsity": 1 - m_kept / module.size})
    return {
        "level": level,
        "strategy": config.prune.strategy if level else "dense",
        "sparsity": 1 - kept / prunable,
        "sparsity_all_parameters": (prunable - kept) / total_params,
        "prunable_parameters": prunable,
        "surviving_prunable": kept,
        "total_parameters": total_params,
        "surviving_parameters": total_params - (prunable - kept),
        "per_module": per_module,
        "per_tensor": per_tensor,
        "schedule_applied": schedule,
        "training": summary,
        "wall_time_s": wall_time,
        **(extra or {}),
    }


def _grid(trainer: Trainer, config: LotteryConfig, out: Path) -> dict:
    """A small DDIM grid of the level's EMA weights (a visual check, not a metric)."""
    model = trainer.model
    backup = [p.detach().clone() for p in trainer.parameters]
    trainer.ema.copy_to(trainer.parameters)
    try:
        images = run_sampler(model, config.diffusion, sampler="ddim", num_steps=config.prune.level_sampling_steps,
                             num_samples=config.prune.level_samples, seed=0, device=trainer.device)
    finally:
        with torch.no_grad():
            for p, b in zip(trainer.parameters, backup):
                p.copy_(b)
    save_grid(from_model_range(images), out)
    return {"samples": config.prune.level_samples, "sampler": "ddim",
            "steps": config.prune.level_sampling_steps, "seed": 0, "weights": "ema"}


class Lottery:
    """A ticket search (or a control branch) in one run folder."""

    def __init__(self, config: LotteryConfig, run_dir: str | Path, *, progress: bool = True, log=print):
        validate(config)
        self.config, self.run_dir, self.progress, self.log = config, Path(run_dir), progress, log
        self.images = load_run_images(config)
        probe = self._trainer(self.run_dir / "level_00", hooks=None)
        self.processes = probe.processes
        self.mmap = module_map(probe.model, config.prune.granularity, config.prune.include, config.prune.exclude)
        self.total_params = sum(p.numel() for p in probe.parameters)
        self.network_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in probe.model.config.items()
                               if not k.startswith("_")}
        self.tau = rewind_step(config)
        self.settings = settings_of(config)

    def _trainer(self, work_dir: Path, hooks: StepHooks | None, description: str = "train") -> Trainer:
        return Trainer(self.config, work_dir, images=self.images, hooks=hooks, progress=self.progress,
                       description=description, processes=getattr(self, "processes", None))

    # -- feasibility ----------------------------------------------------------------------------

    def check_reachable(self) -> None:
        pc = self.config.prune
        floor_total = sum(max(len(m.tensors), math.ceil(pc.min_module_density * m.size)) for m in self.mmap.modules)
        prunable = sum(m.size for m in self.mmap.modules)
        if pc.target_sparsity > 1 - floor_total / prunable:
            raise UserError(f"target sparsity {pc.target_sparsity} is beyond what the floor allows "
                            f"({1 - floor_total / prunable:.4f}); lower --target-sparsity or --min-module-density")
        if pc.one_shot:
            return
        reached = simulate_sparsity(pc.strategy, self.mmap, self.settings, pc.max_rounds)
        # per-unit rounding is topped up in the last round: allow one weight per unit of slack
        slack = len(plan_units(pc.strategy, self.mmap, full_masks_like(self.mmap), self.settings)) / prunable
        if reached + slack < pc.target_sparsity:
            rounds = next((r for r in range(pc.max_rounds, 400)
                           if simulate_sparsity(pc.strategy, self.mmap, self.settings, r) >= pc.target_sparsity), None)
            hint = f"raise --max-rounds to {rounds}" if rounds else "raise --prune-ratio"
            raise UserError(f"target sparsity {pc.target_sparsity} cannot be reached: {pc.max_rounds} rounds of "
                            f"{pc.strategy} with p={pc.prune_ratio} reach {reached:.4f}; {hint}")

    # -- levels ---------------------------------------------------------------------------------

    def run(self) -> Path:
        """Run (or continue) the search; returns the run folder."""
        pc = self.config.prune
        if self.processes.is_main:
            prepare_run_dir(self.run_dir, self.config, "lottery")
        self.processes.barrier()
        self.check_reachable()
        self._write_modules()
        if (self.run_dir / "status.json").exists():
            self.log(f"{self.run_dir} is already finished (config {config_hash(self.config)}); nothing to do")
            return self.run_dir
        self.run_level_zero()
        level = 1
        while True:
            previous = read_json(level_dir(self.run_dir, level - 1) / "metrics.json", "level metrics")
            if previous["sparsity"] >= pc.target_sparsity - 0.5 / previous["prunable_parameters"] or \
                    level > (1 if pc.one_shot else pc.max_rounds):
                break
            self.run_pruned_level(level)
            level += 1
        self._finish()
        return self.run_dir

    def _write_modules(self) -> None:
        """The module map and the network's diffusers config: enough to rebuild any level without the data."""
        if not self.processes.is_main:
            return
        if not (self.run_dir / "modules.json").exists():
            write_json(self.run_dir / "modules.json", self.mmap.to_json())
        if not (self.run_dir / "network.json").exists():
            write_json(self.run_dir / "network.json", self.network_config)

    def run_level_zero(self) -> None:
        folder = level_dir(self.run_dir, 0)
        if (folder / "metrics.json").exists():
            return
        if self.config.prune.dense_from:
            self._copy_level_zero(Path(self.config.prune.dense_from))
            return
        rewind_path = self.run_dir / "rewind" / "weights.safetensors"
        trainer = self._trainer(folder, _SaveRewind(rewind_path, self.tau), "level 0 (dense)")
        resumed = trainer.resume()
        if self.tau == 0 and not rewind_path.exists() and self.processes.is_main:
            save_tensors(rewind_path, trainer.weights(), {"step": "0"})
        self.log(f"level 0: dense training, {self.config.train.steps} steps, theta_tau at step {self.tau}"
                 + (f" (resuming at step {trainer.step})" if resumed else ""))
        masks = full_masks(trainer.model, self.mmap.tensor_names)
        self._train_and_finish(trainer, 0, masks, [], {"rewind_step": self.tau})

    def _copy_level_zero(self, source: Path) -> None:
        """Level 0 and theta_tau depend only on data, network, diffusion, training and tau: reuse them."""
        if not (level_dir(source, 0) / "metrics.json").exists() or not (source / "rewind" / "weights.safetensors").exists():
            raise UserError(f"--dense-from {source} has no finished level 0; run it first or drop --dense-from")
        other = from_dict(LotteryConfig, read_json(source / "config.json", "run config")["config"])
        mine = self.config
        same = (other.data.dataset == mine.data.dataset and other.data.split == mine.data.split
                and other.data.image_size == mine.data.image_size and other.data.channels == mine.data.channels
                and other.data.flip == mine.data.flip and other.model == mine.model
                and other.diffusion == mine.diffusion and non_default_train(other) == non_default_train(mine)
                and rewind_step(other) == rewind_step(mine)
                and (other.prune.include, other.prune.exclude) == (mine.prune.include, mine.prune.exclude))
        if not same:
            raise UserError(f"--dense-from {source} was trained with other data, network, training or rewind settings; "
                            "its level 0 is not this run's, drop --dense-from")
        if not self.processes.is_main:
            return
        target = level_dir(self.run_dir, 0)
        staging = self.run_dir / ".level_00.copy"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(level_dir(source, 0), staging, ignore=shutil.ignore_patterns("eval", "checkpoints", "sparse.*",
                                                                                       "costs.json"))
        (self.run_dir / "rewind").mkdir(exist_ok=True)
        shutil.copy2(source / "rewind" / "weights.safetensors", self.run_dir / "rewind" / ".weights.tmp")
        os.replace(self.run_dir / "rewind" / ".weights.tmp", self.run_dir / "rewind" / "weights.safetensors")
        metrics = read_json(staging / "metrics.json")
        metrics["copied_from"] = str(source)
        write_json(staging / "metrics.json", metrics)
        replace_dir(staging, target)
        self.log(f"level 0: reused from {source} (same dense training and theta_tau)")

    def masks_for_level(self, level: int) -> tuple[dict, list[dict]]:
        """The level's masks (computed once and stored before its training starts)."""
        folder = level_dir(self.run_dir, level)
        mask_path = folder / "mask.safetensors"
        schedule_path = folder / "schedule.json"
        if mask_path.exists() and schedule_path.exists():
            return load_masks(mask_path, self.mmap.shapes), read_json(schedule_path)["schedule"]
        pc = self.config.prune
        previous = level_dir(self.run_dir, level - 1)
        prev_masks = load_masks(previous / "mask.safetensors", self.mmap.shapes)
        weights = load_tensors(previous / ("ema.safetensors" if pc.magnitudes == "ema" else "weights.safetensors"))
        settings = self.settings
        if pc.one_shot:
            settings = one_shot_settings(pc.strategy, self.mmap, prev_masks, settings, pc.target_sparsity)
        masks, schedule = prune_round(pc.strategy, self.mmap, prev_masks, weights, settings, pc.target_sparsity)
        if self.processes.is_main:
            save_masks(mask_path, masks)
            write_json(schedule_path, {"level": level, "strategy": pc.strategy, "order": pc.order,
                                       "magnitudes": pc.magnitudes, "schedule": schedule})
        self.processes.barrier()
        return masks, schedule

    def run_pruned_level(self, level: int) -> None:
        folder = level_dir(self.run_dir, level)
        if (folder / "metrics.json").exists():
            return
        masks, schedule = self.masks_for_level(level)
        self._train_masked(folder, level, masks, schedule, self._rewound_weights())

    def _rewound_weights(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.run_dir / "rewind" / "weights.safetensors", "rewind weights")

    def masked_trainer(self, folder: Path, level: int, masks, start_weights) -> Trainer:
        """A trainer for a pruned level: resumed from its checkpoint, or rewound to step tau."""
        sparse = 1 - count_kept(masks) / count_total(masks)
        trainer = self._trainer(folder, None, f"level {level} ({sparse:.1%} sparse)")
        trainer.hooks = MaskedTraining(trainer.model, masks)
        if trainer.resume():
            self.log(f"level {level}: resuming at step {trainer.step}")
        else:
            # theta_tau * m; fresh Adam moments; the EMA restarts from these masked weights
            trainer.load_weights(apply_masks(start_weights, masks))
            trainer.step = self.tau
        return trainer

    def _train_masked(self, folder: Path, level: int, masks, schedule, start_weights, extra=None) -> None:
        trainer = self.masked_trainer(folder, level, masks, start_weights)
        self.log(f"level {level}: sparsity {1 - count_kept(masks) / count_total(masks):.4f}, "
                 f"training steps {trainer.step}..{self.config.train.steps}")
        self._train_and_finish(trainer, level, masks, schedule, extra or {})

    def _train_and_finish(self, trainer: Trainer, level: int, masks, schedule, extra: dict) -> None:
        folder = trainer.work_dir
        started = time.perf_counter()
        summary = trainer.run()
        if self.processes.is_main:
            if level == 0:
                save_masks(folder / "mask.safetensors", masks)
            save_tensors(folder / "weights.safetensors", trainer.weights())
            save_tensors(folder / "ema.safetensors", trainer.ema_weights())
            samples = _grid(trainer, self.config, folder / "samples.png")
            metrics = level_metrics(level, masks, self.mmap, self.total_params, summary, schedule, self.config,
                                    time.perf_counter() - started, {**extra, "level_samples": samples})
            write_json(folder / "metrics.json", metrics)  # written last: marks the level finished
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            self.log(f"level {level}: done, sparsity {metrics['sparsity']:.4f}, final loss "
                     f"{summary['final_loss']:.4f}")
        self.processes.barrier()

    def _finish(self) -> None:
        if not self.processes.is_main:
            return
        levels = sorted(p for p in self.run_dir.glob("level_*") if (p / "metrics.json").exists())
        rows = []
        for folder in levels:
            m = read_json(folder / "metrics.json")
            rows.append({"level": m["level"], "sparsity": m["sparsity"],
                         "sparsity_all_parameters": m["sparsity_all_parameters"],
                         "surviving_parameters": m["surviving_parameters"],
                         "final_loss": m["training"]["final_loss"], "wall_time_s": m["wall_time_s"]})
        write_json(self.run_dir / "summary.json", {"config_hash": config_hash(self.config),
                                                   "non_default": non_default(self.config), "levels": rows})
        write_json(self.run_dir / "status.json", {"state": "finished", "levels": len(rows), "time": time.time()})
        self.log(f"finished: {self.run_dir} ({len(rows)} levels, final sparsity {rows[-1]['sparsity']:.4f})")


def full_masks_like(mmap: ModuleMap) -> dict[str, torch.Tensor]:
    return {n: torch.ones(shape, dtype=torch.bool) for n, shape in mmap.shapes.items()}


def non_default_train(config: LotteryConfig) -> dict:
    return {k: v for k, v in non_default(config).items() if k.startswith("train.")}


def one_shot_settings(strategy: str, mmap: ModuleMap, masks, settings: PruneSettings, target: float) -> PruneSettings:
    """Scale the schedule's ratios (p and q alike) so that one round reaches the target.

    The per-module cap stays the user's, raised to the target itself when it is lower (a one-shot
    unified prune to 99 % needs a 99 % ratio), and to 100 % only if the target needs it.
    """
    from dataclasses import replace

    from .pruning import plan_units

    total = count_total(masks)
    needed = math.ceil(target * total) - (total - count_kept(masks))

    def planned(scale: float, cap: float) -> int:
        trial = replace(settings, prune_ratio=settings.prune_ratio * scale,
                        ratio_increment=settings.ratio_increment * scale, max_round_ratio=cap)
        return sum(u.planned() for u in plan_units(strategy, mmap, masks, trial))

    ceiling = 2.0 / max(settings.prune_ratio, 1e-6)
    cap = max(settings.max_round_ratio, target)
    if planned(ceiling, cap) < needed:
        cap = 1.0
    low, high = 1.0, ceiling
    for _ in range(60):
        mid = (low + high) / 2
        if planned(mid, cap) >= needed:
            high = mid
        else:
            low = mid
    return replace(settings, prune_ratio=settings.prune_ratio * high,
                   ratio_increment=settings.ratio_increment * high, max_round_ratio=cap)


# ----------------------------------------------------------------------------------------------
# Controls: random re-initialisation and random masks, as branches of a ticket run


class ControlBranch(Lottery):
    """Mirrors chosen levels of a finished ticket run with re-drawn weights or random masks."""

    def __init__(self, config: LotteryConfig, source: str | Path, out: str | Path | None, **kwargs):
        self.source = Path(source)
        if not (self.source / "config.json").exists():
            raise UserError(f"--control-of {self.source} is not a ticket run folder (no config.json)")
        stored = read_json(self.source / "config.json", "run config")
        if stored.get("kind") != "lottery":
            raise UserError(f"--control-of {self.source} is a {stored.get('kind')} run, not a ticket run")
        self.source_config = from_dict(LotteryConfig, stored["config"])
        kind = "reinit" if config.prune.reinit else "random"
        if kind == "reinit" and config.train.seed_init == self.source_config.train.seed_init:
            raise UserError("--reinit needs new initial weights: pass a --seed-init different from the ticket "
                            f"run's ({self.source_config.train.seed_init})")
        out = Path(out) if out else self.source / "branches" / f"{kind}-{config_hash(config)}"
        super().__init__(config, out, **kwargs)
        self.kind = kind
        self.tau = rewind_step(self.source_config)

    def run(self) -> Path:
        if self.processes.is_main:
            prepare_run_dir(self.run_dir, self.config, f"control-{self.kind}")
        self.processes.barrier()
        self._write_modules()
        available = sorted(int(p.name.split("_")[1]) for p in self.source.glob("level_*")
                           if (p / "metrics.json").exists() and p.name != "level_00")
        levels = list(self.config.prune.levels) or available
        for level in levels:
            if level not in available:
                raise UserError(f"{self.source} has no finished level {level} (finished: "
                                f"{', '.join(map(str, available)) or 'none'}); pick from those")
        for level in levels:
            folder = level_dir(self.run_dir, level)
            if (folder / "metrics.json").exists():
                continue
            source_masks = load_masks(level_dir(self.source, level) / "mask.safetensors", self.mmap.shapes)
            if self.kind == "reinit":
                masks = source_masks
                trainer = self._trainer(folder, None)
                start = trainer.weights()  # freshly drawn with this config's --seed-init
            else:
                masks = random_masks(source_masks, seed=self.config.train.seed_init)
                start = load_tensors(self.source / "rewind" / "weights.safetensors", "rewind weights")
            if self.processes.is_main:
                folder.mkdir(parents=True, exist_ok=True)
                save_masks(folder / "mask.safetensors", masks)
            extra = {"control": self.kind, "source": str(self.source), "source_level": level}
            self._train_masked(folder, level, masks, [], start, extra)
        self._finish()
        return self.run_dir


def apply_masks(weights: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """theta * m with +0.0 at pruned positions; survivors keep their exact bits."""
    return {n: torch.where(masks[n].to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device))
            if n in masks else w for n, w in weights.items()}


_CONTROL_FIELDS = {"prune.reinit", "prune.strategy", "prune.levels", "prune.control_of", "train.seed_init"}


def control_config(config: LotteryConfig) -> LotteryConfig:
    """A control's config: the ticket run's own, with only the control's fields changed."""
    import copy

    source = Path(config.prune.control_of)
    if not (source / "config.json").exists():
        raise UserError(f"--control-of {source} is not a ticket run folder (no config.json); pass the --out "
                        "folder of a finished find-ticket run")
    stored = read_json(source / "config.json", "run config")
    if stored.get("kind") != "lottery":
        raise UserError(f"--control-of {source} is a {stored.get('kind')} run, not a ticket run")
    source_config = from_dict(LotteryConfig, stored["config"])
    source_values = non_default(source_config)
    for key, value in non_default(config).items():
        if key not in _CONTROL_FIELDS and source_values.get(key) != value:
            raise UserError(f"a control takes its settings from {source}; drop --{key.split('.')[-1].replace('_', '-')}")
    branch = copy.deepcopy(source_config)
    branch.prune.reinit = config.prune.reinit
    branch.prune.strategy = "random" if config.prune.strategy == "random" else source_config.prune.strategy
    branch.prune.levels = config.prune.levels
    branch.prune.control_of = str(source)
    branch.train.seed_init = config.train.seed_init
    branch.train.device = config.train.device
    return branch


def find_ticket(config: LotteryConfig, out: str | Path | None = None, *, progress: bool = True, log=print) -> Path:
    """Run a ticket search, or a control branch when --reinit / --strategy random is given."""
    validate(config)
    if config.prune.reinit or config.prune.strategy == "random":
        branch = control_config(config)
        return ControlBranch(branch, branch.prune.control_of, out, progress=progress, log=log).run()
    out = Path(out) if out else Path("runs") / f"lottery-{config_hash(config)}"
    return Lottery(config, out, progress=progress, log=log).run()


__all__ = ["find_ticket", "Lottery", "ControlBranch", "apply_masks", "control_config"]


# ----------------------------------------------------------------------------------------------
# Reading levels back (for evaluation, FLOPs, CKA and reports)


def run_kind(run: str | Path) -> str:
    run = Path(run)
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json); pass the --out folder of train or find-ticket")
    return read_json(run / "config.json", "run config").get("kind", "train")


def finished_levels(run: str | Path) -> list[int]:
    """Levels with trained weights: a training run is one level, 0."""
    run = Path(run)
    if run_kind(run) == "train":
        return [0] if (run / "ema").is_dir() else []
    return sorted(int(p.name.split("_")[1]) for p in run.glob("level_*") if (p / "metrics.json").exists())


def level_weights(run: str | Path, level: int, weights: str = "ema") -> dict[str, torch.Tensor]:
    run = Path(run)
    if run_kind(run) == "train":
        if level != 0:
            raise UserError(f"{run} is a training run: it has level 0 only")
        return load_tensors(run / weights / "diffusion_pytorch_model.safetensors", "weights")
    levels = finished_levels(run)
    if level not in levels:
        raise UserError(f"{run} has no finished level {level} (finished: {', '.join(map(str, levels)) or 'none'}); "
                        "pick one of those or let find-ticket finish it")
    name = "ema.safetensors" if weights == "ema" else "weights.safetensors"
    return load_tensors(level_dir(run, level) / name, "level weights")


def level_masks(run: str | Path, level: int):
    run = Path(run)
    if run_kind(run) == "train":
        return None
    return load_masks(level_dir(run, level) / "mask.safetensors")


def level_network(run: str | Path, level: int, weights: str = "ema"):
    """The network of one level with its weights loaded (a diffusers UNet2DModel on the CPU)."""
    from diffusers import UNet2DModel

    run = Path(run)
    config_path = run / ("ema/config.json" if run_kind(run) == "train" else "network.json")
    network_config = read_json(config_path, "network config")
    model = UNet2DModel.from_config(network_config)
    state = level_weights(run, level, weights)
    missing = set(dict(model.named_parameters())) - set(state)
    if missing:
        raise UserError(f"the weights of {run} level {level} do not match its network; the run folder is damaged")
    model.load_state_dict(state, strict=False)
    return model.eval()


def level_config(run: str | Path):
    """The run's config (a LotteryConfig for ticket runs, a RunConfig for training runs)."""
    from .config import RunConfig

    stored = read_json(Path(run) / "config.json", "run config")
    cls = RunConfig if stored.get("kind", "train") == "train" else LotteryConfig
    return from_dict(cls, stored["config"])
