"""The lottery loop: iterative magnitude pruning with late rewinding (Algorithm 1 of the paper).

Level 0 trains the dense network for i steps and saves theta_tau at step tau = f * i.  Level L
prunes level L-1's trained weights with the chosen strategy, rewinds the survivors to theta_tau,
resets Adam and the EMA, and trains from step tau to step i: the learning rate and the data order
are functions of the step, so they are restored exactly.  A finished level is never recomputed; a
killed level resumes from its newest valid checkpoint.  Raising ``--target-sparsity`` or
``--max-rounds`` (or extending ``--sparsity-schedule``) on a finished search continues it from
its last level.  The folder layout is the run model's (:mod:`runs`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.config.settings import LotteryConfig, RunConfig, apply_overrides, check_config, config_hash, non_default, to_dict
from ddpm_lottery.pruning.costs import stored_costs
from ddpm_lottery.data.datasets import from_model_range
from ddpm_lottery.models.diffusion import sample as run_sampler
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.figures import save_grid
from ddpm_lottery.utils.files import copy_file, load_tensors, make_dirs, read_json, save_tensors, staged_folder, write_json
from ddpm_lottery.models.networks import adopt_source, build_model
from ddpm_lottery.pruning.masks import (
    STRATEGIES, ModuleMap, PruneSettings, count_kept, count_total, full_masks, module_map, plan_units, prune_round,
    random_masks, save_masks, simulate_sparsity,
)
from ddpm_lottery.utils.launch import Processes, setup_processes
from ddpm_lottery.runs.folders import Level, Run
from ddpm_lottery.training.tracking import Tracking
from ddpm_lottery.training.trainer import StepHooks, Trainer, load_run_images


def settings_of(config: LotteryConfig) -> PruneSettings:
    pc = config.prune
    return PruneSettings(prune_ratio=pc.prune_ratio, ratio_increment=pc.ratio_increment, order=pc.order,
                         max_round_ratio=pc.max_round_ratio, min_module_density=pc.min_module_density)


@dataclass(frozen=True)
class Control:
    """A control branch: what makes a claim about *winning* tickets testable."""

    name: str
    description: str


CONTROLS: dict[str, Control] = {c.name: c for c in (
    Control("reinit", "the masks of --control-of with freshly drawn initial weights (--seed-init)"),
    Control("random", "random masks with the per-tensor sparsities of --control-of's levels, rewound to its "
                      "theta_tau (--seed-init seeds the masks)"),
    Control("refill", "channel tickets refilled from --control-of's unstructured masks (the channels holding the "
                      "most surviving weights), rewound to its theta_tau"),
)}


def control_kind(config: LotteryConfig) -> str | None:
    if config.prune.refill:
        return "refill"
    if config.prune.reinit:
        return "reinit"
    if config.prune.strategy == "random":
        return "random"
    return None


def validate(config: LotteryConfig) -> None:
    """Cross-setting checks of a search (single settings are checked where they are declared)."""
    check_config(config)  # a config built in code has not been through the declarations' checks yet
    pc = config.prune
    if pc.strategy == "random" and not pc.control_of:
        raise UserError("--strategy random is a control: give --control-of RUN, the ticket run whose "
                        "per-tensor sparsities it copies")
    if pc.reinit and not pc.control_of:
        raise UserError("--reinit is a control: give --control-of RUN, the ticket run whose masks it re-uses")
    if pc.reinit and pc.strategy == "random":
        raise UserError("choose one control: --reinit or --strategy random, not both")
    if pc.refill and (pc.reinit or pc.strategy == "random" or not pc.control_of):
        raise UserError("--refill turns the unstructured levels of --control-of RUN into channel tickets; give "
                        "--control-of and no other control")
    if pc.strategy not in STRATEGIES and pc.strategy != "random":
        raise UserError(f"unknown strategy {pc.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    schedule = list(pc.sparsity_schedule)
    if schedule:
        if any(not 0 < s < 1 for s in schedule) or any(b <= a for a, b in zip(schedule, schedule[1:])):
            raise UserError(f"--sparsity-schedule must rise strictly within (0, 1), got "
                            f"{','.join(map(str, schedule))}; e.g. 0.5,0.75,0.875")
        if pc.one_shot:
            raise UserError("--sparsity-schedule sets every round's sparsity; it cannot be combined with --one-shot")


def rewind_step(config: LotteryConfig) -> int:
    return int(round(config.prune.rewind_fraction * config.train.steps))


def level_targets(config: LotteryConfig) -> tuple[list[float | None], float]:
    """The sparsity each pruned level is trimmed to (None: the strategy's own ratio) and the final target."""
    pc = config.prune
    if pc.sparsity_schedule:
        return list(pc.sparsity_schedule), pc.sparsity_schedule[-1]
    rounds = 1 if pc.one_shot else pc.max_rounds
    return [pc.target_sparsity] * rounds, pc.target_sparsity


class _SaveRewind(StepHooks):
    """Saves theta_tau when level 0 reaches step tau (written once, atomically, before that step's checkpoint)."""

    def __init__(self, path: Path, tau: int):
        self.path, self.tau = path, tau

    def after_step(self, trainer: Trainer, step: int) -> None:
        if trainer.step == self.tau and not self.path.exists() and trainer.processes.is_main:
            save_tensors(self.path, trainer.weights(), {"step": str(self.tau)})


# ----------------------------------------------------------------------------------------------


def level_metrics(level: int, masks, mmap: ModuleMap, total_params: int, summary: dict, schedule: list[dict],
                  strategy: str, wall_time: float, extra: dict | None = None) -> dict:
    kept, prunable = count_kept(masks), count_total(masks)
    per_tensor = {n: 1 - int(masks[n].sum()) / masks[n].numel() for n in mmap.tensor_names}
    per_module = []
    for module in mmap.modules:
        m_kept = sum(int(masks[n].sum()) for n in module.tensors)
        per_module.append({"index": module.index, "name": module.name, "size": module.size, "kept": m_kept,
                           "sparsity": 1 - m_kept / module.size})
    return {
        "level": level,
        "strategy": strategy if level else "dense",
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


def track_level(tracking: Tracking, metrics: dict, level: Level, step: int) -> None:
    """A finished level in the tracker: its sparsities, per-module sparsity and sample grid; then close it."""
    if tracking.active:
        values = {"level/sparsity": metrics["sparsity"], "level/final_loss": metrics["training"]["final_loss"],
                  "level/sparsity_all_parameters": metrics["sparsity_all_parameters"]}
        if "channel_sparsity" in metrics:
            values["level/channel_sparsity"] = metrics["channel_sparsity"]
        values.update({f"module_sparsity/{m['index']:02d}_{m['name']}": m["sparsity"] for m in metrics["per_module"]})
        tracking.scalars(values, step)
        if level.grid_path.exists():
            from PIL import Image

            tracking.images("level/samples", np.asarray(Image.open(level.grid_path).convert("RGB"))[None], step)
    tracking.close()


def _grid(trainer: Trainer, config, level: Level, samples: int, steps: int, snapshots: int = 7) -> dict:
    """A small DDIM grid of the level's EMA weights (a visual check, not a metric), and the first image's
    denoising trajectory (the report's Figure 3), both stored beside the level."""
    backup = [p.detach().clone() for p in trainer.parameters]
    trainer.ema.copy_to(trainer.parameters)
    captured: list[tuple[int, torch.Tensor]] = []
    try:
        images = run_sampler(trainer.model, config.diffusion, sampler="ddim", num_steps=steps, num_samples=samples,
                             seed=0, device=trainer.device,
                             on_intermediate=lambda t, x: captured.append((t, x[0].detach().cpu().clone())))
    finally:
        with torch.no_grad():
            for p, b in zip(trainer.parameters, backup):
                p.copy_(b)
    save_grid(from_model_range(images), level.grid_path)
    picks = sorted({round(i * (len(captured) - 1) / (snapshots - 1)) for i in range(snapshots)})
    level.save_denoising(from_model_range(torch.stack([captured[i][1].clamp(-1, 1) for i in picks])),
                         [captured[i][0] for i in picks], f"DDIM {steps} steps, noise seed 0, EMA weights")
    return {"samples": samples, "sampler": "ddim", "steps": steps, "seed": 0, "weights": "ema"}


class LevelTrainer:
    """What every run kind shares: its data, processes, network description, and training one level."""

    kind = "train"

    def __init__(self, config: RunConfig, out: str | Path, *, progress: bool = True, log=print):
        self.config, self.out, self.progress, self.log = adopt_source(config), Path(out), progress, log
        self.processes: Processes = setup_processes(config.runtime.device, config.train.mixed_precision)
        self.images = load_run_images(config)
        from ddpm_lottery.data.datasets import data_fingerprint

        self.fingerprint = data_fingerprint(self.images, config.data.split)
        probe = build_model(config.model, self.images.images.shape[1], seed=config.train.seed_init,
                            image_size=self.images.images.shape[-1])
        prune = getattr(config, "prune", None)
        self.mmap = module_map(probe, prune.granularity if prune else "block", prune.include if prune else (),
                               prune.exclude if prune else ())
        self.total_params = sum(p.numel() for p in probe.parameters())
        self.groups = None  # channel tickets: the channel groups (structure.py)
        if prune is not None and prune.structure == "channel":
            from ddpm_lottery.pruning.channels.groups import channel_groups

            self.groups = channel_groups(probe, prune.include, prune.exclude, prune.channel_scope)
        self.network_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in probe.config.items()
                               if not k.startswith("_")}
        self.run: Run | None = None
        self._lock = None

    def trainer_for(self, level: Level, hooks: StepHooks | None, description: str) -> Trainer:
        tracking = Tracking(self.config.runtime.log_to, self.out, level.dir.name, to_dict(self.config),
                            is_main=self.processes.is_main)
        return Trainer(self.config, level, images=self.images, hooks=hooks, progress=self.progress,
                       description=description, processes=self.processes, log=self.log, tracking=tracking)

    def open_run(self, extra: dict | None = None) -> Run:
        """Create or reopen the run folder (main process), take its lock, clean what a kill left."""
        if self.processes.is_main:
            self.run = Run.prepare(self.out, self.config, self.kind, self.fingerprint, extra=extra, log=self.log)
            self._lock = self.run.lock()
            self._lock.acquire()
            self.run.clean_leftovers()
            if not self.run.modules_path.exists():
                write_json(self.run.modules_path, self.mmap.to_json())
            if not self.run.network_path.exists():
                write_json(self.run.network_path, self.network_config)
            if self.groups is not None and not self.run.channel_groups_path.exists():
                from ddpm_lottery.pruning.channels.groups import save_groups

                save_groups(self.run.channel_groups_path, self.groups)
        self.processes.barrier()
        if self.run is None:
            self.run = Run.open(self.out)
        return self.run

    def close_run(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def train_level(self, trainer: Trainer, index: int, masks, schedule: list[dict], strategy: str,
                    extra: dict) -> dict:
        """Train a level to the end and store it; metrics.json is written last and marks it finished."""
        level = trainer.level
        summary = trainer.run()
        metrics = None
        if self.processes.is_main:
            if not level.mask_path.exists():  # pruned levels stored theirs before training
                save_masks(level.mask_path, masks)
            save_tensors(level.weights_path("raw"), trainer.weights())
            save_tensors(level.weights_path("ema"), trainer.ema_weights())
            prune = getattr(self.config, "prune", None)
            extra = {**extra, **self.level_structure(trainer, level)}
            grid = _grid(trainer, self.config, level, prune.level_samples if prune else 16,
                         prune.level_sampling_steps if prune else 20)
            metrics = level_metrics(index, masks, self.mmap, self.total_params, summary, schedule, strategy,
                                    summary["wall_time_s"], {**extra, "level_samples": grid})
            write_json(level.metrics_path, metrics)
            # the sparse export now, not when the level is first measured: a level whose dense files are left out
            # of git (a committed study keeps pruned levels this way) keeps its weights only through it
            stored_costs(level)
            level.checkpoints.remove_all()
            track_level(trainer.tracking, metrics, level, trainer.step)
            self.log(f"level {index}: done, sparsity {metrics['sparsity']:.4f}, final loss "
                     f"{summary['final_loss']:.4f}")
        self.processes.barrier()
        return metrics

    def level_structure(self, trainer: Trainer, level: Level) -> dict:
        """Channel tickets: compact the trained level into a smaller network, check it, save it beside the level."""
        if self.groups is None:
            return {}
        from ddpm_lottery.pruning.channels.groups import (
            channel_sparsity, compact, compaction_error, full_channel_masks, install_kept_norms, save_channel_masks,
            save_compact,
        )

        if not level.channels_path.exists():  # level 0: every channel
            save_channel_masks(level.channels_path, full_channel_masks(self.groups))
        masks = level.channel_masks()
        masked = build_model(self.config.model, self.images.images.shape[1], image_size=self.images.images.shape[-1])
        masked.load_state_dict(trainer.ema_weights())
        install_kept_norms(masked, self.groups, masks)
        small = compact(masked, self.groups, masks)
        error = compaction_error(masked, small)
        save_compact(level.compact_spec_path, level.compact_path, small, "ema")
        compact_params = sum(p.numel() for p in small.parameters())
        return {"structure": "channel", "channel_sparsity": channel_sparsity(self.groups, masks),
                "channels_kept": {g.name: int(masks[g.name].sum()) for g in self.groups},
                "channels_total": sum(g.channels for g in self.groups),
                "compact": {"parameters": compact_params, "parameter_ratio": compact_params / self.total_params,
                            "max_abs_difference": error, "probe": "2 images of N(0, 1) noise, timesteps 1 and 999",
                            "weights": "ema"}}

    def search_sparsity(self, metrics: dict) -> float:
        """What levels are pruned towards: weight sparsity, or channel sparsity for channel tickets."""
        # a dense level 0 reused from a weight search (--dense-from) has no channel figures: it has every channel
        return metrics.get("channel_sparsity", metrics["sparsity"]) if self.groups is not None else metrics["sparsity"]

    def write_summary(self) -> list[dict]:
        rows = []
        if self.processes.is_main:
            for index in self.run.finished_levels():
                m = self.run.level(index).metrics()
                rows.append({"level": m["level"], "sparsity": m["sparsity"],
                             **({"channel_sparsity": m["channel_sparsity"]} if "channel_sparsity" in m else {}),
                             "sparsity_all_parameters": m["sparsity_all_parameters"],
                             "surviving_parameters": m["surviving_parameters"],
                             "final_loss": m["training"]["final_loss"], "wall_time_s": m["wall_time_s"]})
            self.run.write_summary(rows)
        return rows


class Lottery(LevelTrainer):
    """A ticket search in one run folder."""

    kind = "lottery"

    def __init__(self, config: LotteryConfig, out: str | Path, *, progress: bool = True, log=print):
        validate(config)
        super().__init__(config, out, progress=progress, log=log)
        self.tau = rewind_step(config)
        self.settings = settings_of(config)

    # -- feasibility ----------------------------------------------------------------------------

    def check_reachable(self) -> None:
        pc = self.config.prune
        _, final = level_targets(self.config)
        if self.groups is not None:
            self._check_channels_reachable(final)
            return
        floor_total = sum(max(len(m.tensors), math.ceil(pc.min_module_density * m.size)) for m in self.mmap.modules)
        prunable = sum(m.size for m in self.mmap.modules)
        if final > 1 - floor_total / prunable:
            raise UserError(f"target sparsity {final} is beyond what the floor allows "
                            f"({1 - floor_total / prunable:.4f}); lower the target or --min-module-density")
        if pc.one_shot or pc.sparsity_schedule:
            return  # the ratios are scaled to reach each level's target
        reached = simulate_sparsity(pc.strategy, self.mmap, self.settings, pc.max_rounds)
        # per-unit rounding is topped up in the last round: allow one weight per unit of slack
        slack = len(plan_units(pc.strategy, self.mmap, full_masks_like(self.mmap), self.settings)) / prunable
        if reached + slack < pc.target_sparsity:
            rounds = next((r for r in range(pc.max_rounds, 400)
                           if simulate_sparsity(pc.strategy, self.mmap, self.settings, r) >= pc.target_sparsity), None)
            hint = f"raise --max-rounds to {rounds}" if rounds else "raise --prune-ratio"
            raise UserError(f"target sparsity {pc.target_sparsity} cannot be reached: {pc.max_rounds} rounds of "
                            f"{pc.strategy} with p={pc.prune_ratio} reach {reached:.4f}; {hint}")

    def _check_channels_reachable(self, final: float) -> None:
        from ddpm_lottery.pruning.channels.groups import max_channel_sparsity, simulate_channel_sparsity

        ceiling = max_channel_sparsity(self.groups, self.settings)
        if final > ceiling:
            raise UserError(f"channel sparsity {final} is beyond what this network allows ({ceiling:.4f}: every "
                            "channel group keeps at least one channel per norm group or head); lower the target")
        pc = self.config.prune
        if pc.one_shot or pc.sparsity_schedule:
            return
        reached = simulate_channel_sparsity(pc.strategy, self.groups, self.settings, pc.max_rounds)
        if reached < final:
            raise UserError(f"channel sparsity {final} cannot be reached: {pc.max_rounds} rounds of {pc.strategy} "
                            f"with p={pc.prune_ratio} reach {reached:.4f} (channels move a norm group's worth at a "
                            "time); raise --prune-ratio or --max-rounds, or give --sparsity-schedule")

    def _check_extension(self, run: Run) -> None:
        """A search may grow; levels it already has must be the ones its settings now describe."""
        pc = self.config.prune
        targets, _ = level_targets(self.config)
        for index in run.finished_levels():
            if index == 0:
                continue
            metrics = run.level(index).metrics()
            # a channel level lands on the first achievable sparsity at or above its target
            sparsity = metrics.get("channel_target", metrics["sparsity"])
            if pc.sparsity_schedule and index <= len(targets) and abs(sparsity - targets[index - 1]) > 1e-6:
                raise UserError(f"{run.root} level {index} is at sparsity {sparsity:.6f}, but --sparsity-schedule "
                                f"puts level {index} at {targets[index - 1]}; a schedule may only be extended; use "
                                "another --out folder")
        if pc.one_shot:
            stored = run.stored["config"]["prune"]
            if stored.get("target_sparsity") != pc.target_sparsity and 1 in run.finished_levels():
                raise UserError(f"{run.root} is a one-shot search to {stored.get('target_sparsity')}; a one-shot "
                                "search cannot be extended, use another --out folder")

    # -- levels ---------------------------------------------------------------------------------

    def run_search(self) -> Path:
        """Run, continue or extend the search; returns the run folder."""
        self.check_reachable()
        if self.processes.is_main and Run.is_run(self.out):
            self._check_extension(Run.open(self.out))
        run = self.open_run()
        try:
            before = run.finished_levels()
            self.run_level_zero()
            targets, final = level_targets(self.config)
            index = 1
            while index <= len(targets):
                previous = run.level(index - 1).metrics()
                if self.groups is not None:
                    if self.search_sparsity(previous) >= final - 1e-9:
                        break
                elif previous["sparsity"] >= final - 0.5 / previous["prunable_parameters"]:
                    break
                self.run_pruned_level(index, targets[index - 1])
                index += 1
            rows = self.write_summary()
            if self.processes.is_main:
                if run.finished_levels() == before:
                    self.log(f"{run.root} is already finished (run {run.hash}, {len(rows)} levels); nothing to do")
                else:
                    self.log(f"finished: {run.root} ({len(rows)} levels, final sparsity {rows[-1]['sparsity']:.4f})")
        finally:
            self.close_run()
        return self.out

    def run_level_zero(self) -> None:
        level = self.run.level(0)
        if level.finished:
            if not self.run.rewind_path.exists():
                raise UserError(f"{self.run.root} has a finished level 0 but no theta_tau "
                                f"({self.run.rewind_path}); delete {level.dir} and re-run to recompute it")
            return
        if self.config.prune.dense_from:
            self._copy_level_zero(Path(self.config.prune.dense_from))
            return
        trainer = self.trainer_for(level, _SaveRewind(self.run.rewind_path, self.tau), "level 0 (dense)")
        resumed = trainer.resume()
        if resumed and trainer.step >= self.tau and not self.run.rewind_path.exists():
            # only a run written before theta_tau was saved ahead of its checkpoint can get here
            level.checkpoints.remove_all()
            trainer.tracking.close()
            trainer = self.trainer_for(level, _SaveRewind(self.run.rewind_path, self.tau), "level 0 (dense)")
            resumed = False
            self.log("level 0: theta_tau was lost by an earlier kill; retraining level 0 from step 0")
        if self.tau == 0 and not self.run.rewind_path.exists() and self.processes.is_main:
            save_tensors(self.run.rewind_path, trainer.weights(), {"step": "0"})
        self.log(f"level 0: dense training, {self.config.train.steps} steps, theta_tau at step {self.tau}"
                 + (f" (resuming at step {trainer.step})" if resumed else ""))
        masks = full_masks(trainer.model, self.mmap.tensor_names)
        self.train_level(trainer, 0, masks, [], "dense", {"rewind_step": self.tau})

    def _copy_level_zero(self, source_path: Path) -> None:
        """Level 0 and theta_tau depend only on data, network, diffusion, training and tau: reuse them."""
        source = Run.open(source_path)
        trained_only = source.kind == "train"  # a training run: its level 0 is the dense model, it kept no theta_tau
        if not source.level(0).finished or not (source.rewind_path.exists() or trained_only):
            raise UserError(f"--dense-from {source_path} has no finished level 0 with theta_tau; run it first or "
                            "drop --dense-from")
        if trained_only and self.tau != 0:
            raise UserError(f"--dense-from {source_path} is a training run, which keeps no theta_tau at step "
                            f"{self.tau}; give --rewind-fraction 0 (rewinding to theta_0, rebuilt from --seed-init) or "
                            "start from a ticket run")
        other = source.config
        mine = self.config
        differences = [key for key in sorted(set(non_default(other)) | set(non_default(mine)))
                       if key.split(".")[0] in ("data", "model", "diffusion", "train")
                       and non_default(other).get(key) != non_default(mine).get(key)]
        if trained_only:
            pass  # theta_0 is rebuilt below from the same --seed-init (compared with the training settings above)
        elif not isinstance(other, LotteryConfig) or rewind_step(other) != rewind_step(mine):
            differences.append("prune.rewind_fraction (theta_tau)")
        elif (other.prune.include, other.prune.exclude) != (mine.prune.include, mine.prune.exclude):
            differences.append("prune.include/exclude")
        if source.data_fingerprint.get("digest") != self.fingerprint.get("digest"):
            differences.append("the training data")
        if differences:
            raise UserError(f"--dense-from {source_path} differs in {', '.join(differences[:4])}; its level 0 is not "
                            "this run's, drop --dense-from")
        if not self.processes.is_main:
            return
        target, origin = self.run.level(0), source.level(0)
        # the trained level itself, not what was measured on it (evaluations, costs belong to their run)
        with staged_folder(target.dir) as staging:  # the same file names, in a folder that becomes level 0
            files = [getattr(origin, name) for name in ("mask_path", "log_path", "grid_path", "denoising_path")]
            for path in [p for p in files if p.exists()] + [origin.weights_path(w) for w in ("raw", "ema")]:
                copy_file(path, staging / path.name)
            if trained_only:  # theta_0: the initial weights of the training run's --seed-init
                theta = build_model(mine.model, self.images.images.shape[1], seed=mine.train.seed_init,
                                    image_size=self.images.images.shape[-1]).state_dict()
            else:
                theta = load_tensors(source.rewind_path, "rewind weights")
            save_tensors(self.run.rewind_path, theta, {"step": str(self.tau)})
            metrics = origin.metrics()
            metrics["copied_from"] = str(source_path)
            write_json(staging / origin.metrics_path.name, metrics)  # last: marks the copy finished
        stored_costs(target)  # its own costs and sparse export, as every finished level has
        self.log(f"level 0: reused from {source_path} (same dense training and theta_tau)")

    def masks_for_level(self, index: int, target: float | None) -> tuple[dict, list[dict]]:
        """The level's masks: computed once and stored before its training starts (recomputed if damaged)."""
        from ddpm_lottery.utils.files import read_json
        from ddpm_lottery.pruning.masks import load_masks

        level = self.run.level(index)
        if level.mask_path.exists() and level.schedule_path.exists():
            try:
                return (load_masks(level.mask_path, self.mmap.shapes),
                        read_json(level.schedule_path, "pruning schedule")["schedule"])
            except (UserError, KeyError, TypeError):
                self.log(f"level {index}: its stored masks are damaged; recomputing them (they are deterministic)")
        pc = self.config.prune
        previous = self.run.level(index - 1)
        if self.groups is not None:
            return self._channel_masks_for_level(index, target, previous)
        prev_masks = load_masks(previous.mask_path, self.mmap.shapes)
        weights = previous.state(pc.magnitudes)
        settings = self.settings
        if target is not None and (pc.one_shot or pc.sparsity_schedule):
            settings = scaled_settings(pc.strategy, self.mmap, prev_masks, settings, target)
        masks, schedule = prune_round(pc.strategy, self.mmap, prev_masks, weights, settings, target)
        if self.processes.is_main:
            save_masks(level.mask_path, masks)
            write_json(level.schedule_path, {"level": index, "strategy": pc.strategy, "order": pc.order,
                                             "magnitudes": pc.magnitudes, "target": target,
                                             "ratios_scaled_to_target": settings != self.settings,
                                             "schedule": schedule})
        self.processes.barrier()
        return masks, schedule

    def _channel_masks_for_level(self, index: int, target: float | None, previous: Level) -> tuple[dict, list[dict]]:
        from ddpm_lottery.pruning.channels.groups import full_channel_masks, load_channel_masks, prune_channels, save_channel_masks, weight_masks

        pc = self.config.prune
        level = self.run.level(index)
        before = (load_channel_masks(previous.channels_path, self.groups) if previous.channels_path.exists()
                  or previous.index > 0 else full_channel_masks(self.groups))
        channels, schedule = prune_channels(pc.strategy, self.groups, before, previous.state(pc.magnitudes),
                                            self.settings, target)
        masks = weight_masks(self.groups, channels, self.mmap.shapes)
        if self.processes.is_main:
            make_dirs(level.dir)
            save_channel_masks(level.channels_path, channels)
            save_masks(level.mask_path, masks)
            write_json(level.schedule_path, {"level": index, "strategy": pc.strategy, "order": pc.order,
                                             "structure": "channel", "magnitudes": pc.magnitudes, "target": target,
                                             "criterion": "mean |w| of each channel's rows in its producers",
                                             "schedule": schedule})
        self.processes.barrier()
        return masks, schedule

    def run_pruned_level(self, index: int, target: float | None) -> None:
        if self.run.level(index).finished:
            return
        masks, schedule = self.masks_for_level(index, target)
        if self.config.prune.level_start == "fine-tune":
            start = self.run.level(index - 1).state("raw")  # prune-then-fine-tune: no rewinding
        else:
            start = load_tensors(self.run.rewind_path, "rewind weights (theta_tau)",
                                 f"delete {self.run.level(0).dir} and re-run to recompute level 0 and theta_tau")
        self.train_masked(index, masks, schedule, start, self.config.prune.strategy, {})

    def masked_trainer(self, index: int, masks, start_weights) -> Trainer:
        """A trainer for a pruned level: resumed from its checkpoint, or rewound to step tau."""
        sparse = 1 - count_kept(masks) / count_total(masks)
        # level k is the network after pruning round k: the bar names both, and how many rounds at most
        rounds = len(level_targets(self.config)[0]) if isinstance(self.config, LotteryConfig) else index
        trainer = self.trainer_for(self.run.level(index), None,
                                   f"level {index} · round {index}/{rounds} ({sparse:.1%} sparse)")
        if self.groups is not None:
            # biases and norm scales of removed channels are masked too, and the norms see survivors only
            from ddpm_lottery.pruning.channels.groups import install_kept_norms, parameter_masks

            channels = self.run.level(index).channel_masks()
            shapes = {n: tuple(p.shape) for n, p in trainer.model.named_parameters()}
            masks = {**masks, **parameter_masks(self.groups, channels, shapes)}
            install_kept_norms(trainer.model, self.groups, channels)
        trainer.use_masks(masks)
        if trainer.resume():
            self.log(f"level {index}: resuming at step {trainer.step}")
        else:
            # theta_tau * m; fresh Adam moments; the EMA restarts from these masked weights
            trainer.load_weights(apply_masks(start_weights, masks))
            trainer.step = self.tau
        return trainer

    def train_masked(self, index: int, masks, schedule, start_weights, strategy: str, extra: dict) -> None:
        trainer = self.masked_trainer(index, masks, start_weights)
        channels = ""
        if self.groups is not None:
            from ddpm_lottery.pruning.channels.groups import channel_sparsity

            sparsity = channel_sparsity(self.groups, self.run.level(index).channel_masks())
            channels = f"channel sparsity {sparsity:.4f}, "
            level = self.run.level(index)
            stored = read_json(level.schedule_path, "pruning schedule").get("target") if level.schedule_path.exists() else None
            # the level's target (it lands on the first achievable sparsity at or above it), else what it reached
            extra = {**extra, "channel_target": stored if stored is not None else sparsity}
        self.log(f"level {index}: {channels}sparsity {1 - count_kept(masks) / count_total(masks):.4f}, "
                 f"training steps {trainer.step}..{self.config.train.steps}")
        self.train_level(trainer, index, masks, schedule, strategy, extra)


def full_masks_like(mmap: ModuleMap) -> dict[str, torch.Tensor]:
    return {n: torch.ones(shape, dtype=torch.bool) for n, shape in mmap.shapes.items()}


def scaled_settings(strategy: str, mmap: ModuleMap, masks, settings: PruneSettings, target: float) -> PruneSettings:
    """Scale the schedule's ratios (p and q alike) so that one round reaches ``target``.

    Scaling p and q together keeps the strategy's profile (varying still prunes downstream
    modules more).  The per-module cap stays the user's, raised to the target itself when it is
    lower (a one-shot unified prune to 99 % needs a 99 % ratio), and to 100 % only if needed.
    """
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
    low, high = 0.0, ceiling
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

    def __init__(self, config: LotteryConfig, source: Run, out: str | Path, **kwargs):
        self.source = source
        self.control = control_kind(config)
        self.kind = f"control-{self.control}"
        super().__init__(config, out, **kwargs)
        self.tau = rewind_step(source.config)

    def run_search(self) -> Path:
        available = [i for i in self.source.finished_levels() if i > 0]
        levels = list(self.config.prune.levels) or available
        for index in levels:
            if index not in available:
                raise UserError(f"{self.source.root} has no finished level {index} (finished: "
                                f"{', '.join(map(str, available)) or 'none'}); pick from those")
        run = self.open_run()
        try:
            for index in levels:
                level = run.level(index)
                if level.finished:
                    continue
                source_masks = self.source.level(index).masks()
                channels = None
                if self.control == "refill":
                    from ddpm_lottery.pruning.channels.groups import refill_channels, weight_masks

                    channels = refill_channels(self.groups, source_masks)
                    source_masks = weight_masks(self.groups, channels, self.mmap.shapes)
                elif self.groups is not None:
                    from ddpm_lottery.pruning.channels.groups import load_channel_masks, random_channel_masks, weight_masks

                    channels = load_channel_masks(self.source.level(index).channels_path, self.groups)
                    if self.control == "random":
                        channels = random_channel_masks(self.groups, channels, seed=self.config.train.seed_init)
                    source_masks = weight_masks(self.groups, channels, self.mmap.shapes)
                if self.control == "reinit":
                    masks = source_masks
                    # freshly drawn with this config's --seed-init
                    start = build_model(self.config.model, self.images.images.shape[1],
                                        seed=self.config.train.seed_init, image_size=self.images.images.shape[-1],
                                        initial="random").state_dict()
                else:
                    # channel tickets drew their random (or refilled) channels above
                    masks = source_masks if channels is not None else random_masks(source_masks,
                                                                                   seed=self.config.train.seed_init)
                    start = load_tensors(self.source.rewind_path, "rewind weights (theta_tau)")
                if self.processes.is_main:
                    make_dirs(level.dir)
                    save_masks(level.mask_path, masks)
                    if channels is not None:
                        from ddpm_lottery.pruning.channels.groups import save_channel_masks

                        save_channel_masks(level.channels_path, channels)
                extra = {"control": self.control, "source": str(self.source.root), "source_level": index}
                self.train_masked(index, masks, [], start, f"{self.control} control", extra)
            self.write_summary()
        finally:
            self.close_run()
        return self.out


# ----------------------------------------------------------------------------------------------
# Range fine-tuning: a level trained further on one range of timesteps, for a stage schedule


class RangeTuning(LevelTrainer):
    """Fine-tunes one level of a run on the timesteps of ``train.timestep_range`` only.

    The level's masks (and, for channel tickets, its channels and their norms) stay as they are; it
    starts from the level's trained weights or from theta_tau * m, with a fresh optimizer.  The result
    is its own run (kind ``range``) whose level 0 a stage schedule names as ``RUN/level_00``.
    """

    kind = "range"

    def __init__(self, config: LotteryConfig, source: Run, level: int, start: str, out: str | Path, **kwargs):
        self.source, self.source_level, self.start = source, source.level(level).require_finished(), start
        total = config.diffusion.num_train_timesteps
        if config.train.timestep_range[1] > total:
            raise UserError(f"--timestep-range ends at {config.train.timestep_range[1]}, beyond the {total} timesteps "
                            "of the diffusion process")
        super().__init__(config, out, **kwargs)

    def run_tuning(self) -> Path:
        from ddpm_lottery.pruning.channels.groups import install_kept_norms, parameter_masks, save_channel_masks

        run = self.open_run({"source": str(self.source.root), "source_level": self.source_level.index,
                             "start": self.start})
        try:
            level = run.level(0)
            if level.finished:
                self.log(f"{run.root} is already finished; nothing to do")
                return self.out
            masks = self.source_level.masks()
            channels = self.source_level.channel_masks()
            if self.processes.is_main:
                make_dirs(level.dir)
                save_masks(level.mask_path, masks)
                if channels is not None:
                    save_channel_masks(level.channels_path, channels)
            low, high = self.config.train.timestep_range
            trainer = self.trainer_for(level, None, f"timesteps {low}..{high - 1}")
            every = dict(masks)
            if channels is not None:
                shapes = {n: tuple(p.shape) for n, p in trainer.model.named_parameters()}
                every.update(parameter_masks(self.groups, channels, shapes))
                install_kept_norms(trainer.model, self.groups, channels)
            trainer.use_masks(every)
            if trainer.resume():
                self.log(f"resuming at step {trainer.step}")
            else:
                start = (self.source_level.state("raw") if self.start == "trained" else
                         load_tensors(self.source.rewind_path, "rewind weights (theta_tau)"))
                trainer.load_weights(apply_masks(start, every))
            self.log(f"fine-tuning {self.source_level.label()} on timesteps {low}..{high - 1} from its "
                     f"{self.start} weights for {self.config.train.steps} steps")
            self.train_level(trainer, 0, masks, [], "range", {
                "tuned": {"source": str(self.source.root), "source_level": self.source_level.index,
                          "start": self.start, "timesteps": [low, high]}})
            self.write_summary()
        finally:
            self.close_run()
        return self.out


def run_range_tuning(run_dir: str | Path, config, out: str | Path | None = None, *, progress: bool = True,
                     log=print) -> Path:
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


def apply_masks(weights: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """theta * m with +0.0 at pruned positions; survivors keep their exact bits."""
    return {n: torch.where(masks[n].to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device))
            if n in masks else w for n, w in weights.items()}


_CONTROL_FIELDS = {"prune.reinit", "prune.refill", "prune.strategy", "prune.levels", "prune.control_of",
                   "prune.channel_scope", "train.seed_init"}


def control_config(config: LotteryConfig, source: Run) -> LotteryConfig:
    """A control's config: the ticket run's own, with only the control's fields changed."""
    if source.kind != "lottery":
        raise UserError(f"--control-of {source.root} is a {source.kind} run, not a ticket search")
    source_config = source.config
    source_values = non_default(source_config)
    for key, value in non_default(config).items():
        if key not in _CONTROL_FIELDS and source_values.get(key) != value:
            raise UserError(f"a control takes its settings from {source.root}; drop "
                            f"--{key.split('.')[-1].replace('_', '-')}")
    branch = copy.deepcopy(source_config)
    branch.prune.reinit = config.prune.reinit
    if config.prune.refill:
        if source_config.prune.structure != "weight":
            raise UserError(f"--refill starts from unstructured tickets, and {source.root} is a "
                            f"{source_config.prune.structure} search")
        branch.prune.refill, branch.prune.structure = True, "channel"
        branch.prune.channel_scope = config.prune.channel_scope
    branch.prune.strategy = "random" if config.prune.strategy == "random" else source_config.prune.strategy
    branch.prune.levels = config.prune.levels
    branch.prune.control_of = str(source.root)
    branch.prune.dense_from = None
    branch.train.seed_init = config.train.seed_init
    branch.runtime.device = config.runtime.device
    return branch


def search_ticket(config: LotteryConfig, out: str | Path | None = None, *, progress: bool = True,
                  log=print) -> Path:
    """Run a ticket search, or a control branch when --reinit / --strategy random is given; returns
    its run folder."""
    validate(config)
    kind = control_kind(config)
    if kind:
        source = Run.open(config.prune.control_of)
        branch = control_config(config, source)
        if kind == "reinit" and branch.train.seed_init == source.config.train.seed_init:
            raise UserError("--reinit needs new initial weights: pass a --seed-init different from the ticket "
                            f"run's ({source.config.train.seed_init})")
        out = Path(out) if out else source.branch_path(kind, config_hash(branch))
        return ControlBranch(branch, source, out, progress=progress, log=log).run_search()
    out = Path(out) if out else Path("runs") / f"lottery-{config_hash(config)}"
    return Lottery(config, out, progress=progress, log=log).run_search()


__all__ = ["search_ticket", "Lottery", "ControlBranch", "CONTROLS", "apply_masks", "control_config", "RangeTuning",
           "run_range_tuning"]
