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

import itertools
import math
from pathlib import Path

from ddpm_lottery.config import LotteryConfig, check_config, non_default
from ddpm_lottery.lottery.costs import stored_costs
from ddpm_lottery.lottery.levels import LevelTrainer, apply_masks
from ddpm_lottery.lottery.tickets import store_channels
from ddpm_lottery.models.networks import build_model, input_shape
from ddpm_lottery.pruning.masks import count_kept, count_total, full_masks, load_masks, save_masks
from ddpm_lottery.pruning.modules import module_map
from ddpm_lottery.pruning.strategies import STRATEGIES, PruneSettings, simulate_sparsity
from ddpm_lottery.runs.identity import data_identity
from ddpm_lottery.runs.records import PruningSchedule, read_record
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.trainer import StepHooks, Trainer
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import copy_file, load_tensors, save_tensors, staged_folder, write_json


def settings_of(config: LotteryConfig) -> PruneSettings:
    pc = config.prune
    return PruneSettings(
        prune_ratio=pc.prune_ratio,
        ratio_increment=pc.ratio_increment,
        order=pc.order,
        max_round_ratio=pc.max_round_ratio,
        min_module_density=pc.min_module_density,
    )


def validate(config: LotteryConfig) -> None:
    """Cross-setting checks of a search (single settings are checked where they are declared)."""
    check_config(config)  # a config built in code has not been through the declarations' checks yet
    pc = config.prune
    if pc.strategy == "random" and not pc.control_of:
        raise UserError(
            "--strategy random is a control: give --control-of RUN, the ticket run whose "
            "per-tensor sparsities it copies"
        )
    if pc.reinit and not pc.control_of:
        raise UserError("--reinit is a control: give --control-of RUN, the ticket run whose masks it re-uses")
    if pc.reinit and pc.strategy == "random":
        raise UserError("choose one control: --reinit or --strategy random, not both")
    if pc.refill and (pc.reinit or pc.strategy == "random" or not pc.control_of):
        raise UserError(
            "--refill turns the unstructured levels of --control-of RUN into channel tickets; give "
            "--control-of and no other control"
        )
    if pc.strategy not in STRATEGIES and pc.strategy != "random":
        raise UserError(f"unknown strategy {pc.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    schedule = list(pc.sparsity_schedule)
    if schedule:
        if any(not 0 < s < 1 for s in schedule) or any(b <= a for a, b in itertools.pairwise(schedule)):
            raise UserError(
                f"--sparsity-schedule must rise strictly within (0, 1), got "
                f"{','.join(map(str, schedule))}; e.g. 0.5,0.75,0.875"
            )
        if pc.one_shot:
            raise UserError("--sparsity-schedule sets every round's sparsity; it cannot be combined with --one-shot")


def rewind_step(config: LotteryConfig) -> int:
    return round(config.prune.rewind_fraction * config.train.steps)


def level_targets(config: LotteryConfig) -> tuple[list[float | None], float]:
    """The sparsity each pruned level is trimmed to (None: the strategy's own ratio) and the final target."""
    pc = config.prune
    if pc.sparsity_schedule:
        return list(pc.sparsity_schedule), pc.sparsity_schedule[-1]
    rounds = 1 if pc.one_shot else pc.max_rounds
    return [pc.target_sparsity] * rounds, pc.target_sparsity


def planned_rounds(config: LotteryConfig) -> int:
    """How many pruned levels the search will have, known before anything trains.

    A schedule has one level per entry and ``--one-shot`` one. A target without a schedule stops at the first
    round that reaches it (``run_search``), which depends on the strategy: ``varying``'s p + j*q removes more
    than p a round, so counting p alone would plan rounds that never come (and a study would wait for them).
    For weight tickets the rounds are simulated from the network's module sizes; channel tickets, whose
    rounds follow the channels' sizes, are counted at about p of the survivors a round.
    """
    pc = config.prune
    if pc.sparsity_schedule:
        return len(pc.sparsity_schedule)
    if pc.one_shot:
        return 1
    if pc.structure == "channel" or pc.strategy not in STRATEGIES:
        needed = math.ceil(math.log(1 - pc.target_sparsity) / math.log(1 - pc.prune_ratio) - 1e-9)
        return min(pc.max_rounds, max(1, needed))
    return len(_simulated_sparsities(config))


def _simulated_sparsities(config: LotteryConfig) -> list[float]:
    """A weight search's sparsity after each round, from the module sizes alone, up to the round that
    reaches the target (or ``max_rounds``)."""
    pc = config.prune
    channels, side = input_shape(config)
    mmap = module_map(
        build_model(config.model, channels, image_size=side), pc.granularity, pc.include, pc.exclude, pc.layer_groups
    )
    half_weight = 0.5 / sum(m.size for m in mmap.modules)  # the slack of LevelTickets.reached
    settings = settings_of(config)
    reached = []
    for rounds in range(1, pc.max_rounds + 1):
        reached.append(simulate_sparsity(pc.strategy, mmap, settings, rounds))
        if reached[-1] >= pc.target_sparsity - half_weight:
            break
    return reached


def planned_sparsities(config: LotteryConfig) -> list[float] | None:
    """The sparsity of each pruned level (levels 1, 2, ...) as planned before anything trains, or None for
    channel tickets (their rounds follow the channels' sizes, and they train as smaller dense networks).

    A schedule's entries, ``--one-shot``'s target, or the rounds simulated from the module sizes with the
    last trimmed to the target, as :func:`planned_rounds` counts them."""
    pc = config.prune
    if pc.structure == "channel":
        return None
    if pc.sparsity_schedule:
        return list(pc.sparsity_schedule)
    if pc.one_shot:
        return [pc.target_sparsity]
    if pc.strategy not in STRATEGIES:
        rounds = planned_rounds(config)
        return [min(pc.target_sparsity, 1 - (1 - pc.prune_ratio) ** r) for r in range(1, rounds + 1)]
    return [min(pc.target_sparsity, s) for s in _simulated_sparsities(config)]


class _SaveRewind(StepHooks):
    """Saves theta_tau when level 0 reaches step tau (written once, atomically, before that step's checkpoint)."""

    def __init__(self, path: Path, tau: int):
        self.path, self.tau = path, tau

    def after_step(self, trainer: Trainer, step: int) -> None:
        if trainer.step == self.tau and not self.path.exists() and trainer.processes.is_main:
            save_tensors(self.path, trainer.weights(), {"step": str(self.tau)})


# ----------------------------------------------------------------------------------------------


class Lottery(LevelTrainer):
    """A ticket search in one run folder."""

    kind = "lottery"

    def __init__(self, config: LotteryConfig, out: str | Path, **kwargs):
        validate(config)
        super().__init__(config, out, **kwargs)
        self.tau = rewind_step(config)
        self.settings = settings_of(config)

    # -- feasibility ----------------------------------------------------------------------------

    def check_reachable(self) -> None:
        _, final = level_targets(self.config)
        self.tickets.check_reachable(self.config.prune, self.settings, final)

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
            # a schedule's target is met to the nearest weight: a level may sit up to one weight above it
            rounding = 1.0 / metrics["prunable_parameters"] + 1e-9
            if pc.sparsity_schedule and index <= len(targets) and abs(sparsity - targets[index - 1]) > rounding:
                raise UserError(
                    f"{run.root} level {index} is at sparsity {sparsity:.6f}, but --sparsity-schedule "
                    f"puts level {index} at {targets[index - 1]}; a schedule may only be extended; use "
                    "another --out folder"
                )
        if pc.one_shot:
            stored = run.stored["config"]["prune"]
            if stored.get("target_sparsity") != pc.target_sparsity and 1 in run.finished_levels():
                raise UserError(
                    f"{run.root} is a one-shot search to {stored.get('target_sparsity')}; a one-shot "
                    "search cannot be extended, use another --out folder"
                )

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
                if self.tickets.reached(run.level(index - 1).metrics(), final):
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
                raise UserError(
                    f"{self.run.root} has a finished level 0 but no theta_tau "
                    f"({self.run.rewind_path}); delete {level.dir} and re-run to recompute it"
                )
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
        self.log(
            f"level 0: dense training, {self.config.train.steps} steps, theta_tau at step {self.tau}"
            + (f" (resuming at step {trainer.step})" if resumed else "")
        )
        masks = full_masks(trainer.model, self.mmap.tensor_names)
        self.train_level(trainer, 0, masks, [], "dense", {"rewind_step": self.tau})

    def _copy_level_zero(self, source_path: Path) -> None:
        """Level 0 and theta_tau depend only on data, network, diffusion, training and tau: reuse them."""
        source = Run.open(source_path)
        trained_only = source.kind == "train"  # a training run: its level 0 is the dense model, it kept no theta_tau
        if not source.level(0).finished or not (source.rewind_path.exists() or trained_only):
            raise UserError(
                f"--dense-from {source_path} has no finished level 0 with theta_tau; run it first or drop --dense-from"
            )
        if trained_only and self.tau != 0:
            raise UserError(
                f"--dense-from {source_path} is a training run, which keeps no theta_tau at step "
                f"{self.tau}; give --rewind-fraction 0 (rewinding to theta_0, rebuilt from --seed-init) or "
                "start from a ticket run"
            )
        other = source.config
        mine = self.config
        differences = [
            key
            for key in sorted(set(non_default(other)) | set(non_default(mine)))
            if key.split(".")[0] in ("data", "model", "diffusion", "train")
            and non_default(other).get(key) != non_default(mine).get(key)
        ]
        if trained_only:
            pass  # theta_0 is rebuilt below from the same --seed-init (compared with the training settings above)
        elif not isinstance(other, LotteryConfig) or rewind_step(other) != rewind_step(mine):
            differences.append("prune.rewind_fraction (theta_tau)")
        elif (other.prune.include, other.prune.exclude, other.prune.layer_groups) != (
            mine.prune.include,
            mine.prune.exclude,
            mine.prune.layer_groups,
        ):
            differences.append("prune.include/exclude/layer_groups")
        if data_identity(source.data_fingerprint) != data_identity(self.fingerprint):
            differences.append("the training data")
        if differences:
            raise UserError(
                f"--dense-from {source_path} differs in {', '.join(differences[:4])}; its level 0 is not "
                "this run's, drop --dense-from"
            )
        if not self.processes.is_main:
            return
        target, origin = self.run.level(0), source.level(0)
        # the trained level itself, not what was measured on it (evaluations, costs belong to their run)
        with staged_folder(target.dir) as staging:  # the same file names, in a folder that becomes level 0
            files = [getattr(origin, name) for name in ("mask_path", "log_path", "grid_path", "denoising_path")]
            for path in [p for p in files if p.exists()] + [origin.weights_path(w) for w in ("raw", "ema")]:
                copy_file(path, staging / path.name)
            if trained_only:  # theta_0: the initial weights of the training run's --seed-init
                theta = build_model(
                    mine.model,
                    self.images.images.shape[1],
                    seed=mine.train.seed_init,
                    image_size=self.images.images.shape[-1],
                ).state_dict()
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
        level = self.run.level(index)
        if level.mask_path.exists() and level.schedule_path.exists():
            try:
                return (
                    load_masks(level.mask_path, self.mmap.shapes),
                    read_record(level.schedule_path, PruningSchedule, "pruning schedule", "it is recomputed")[
                        "schedule"
                    ],
                )
            except (UserError, KeyError, TypeError):
                self.log(f"level {index}: its stored masks are damaged; recomputing them (they are deterministic)")
        masks, schedule, channels, record = self.tickets.prune(
            index, self.run.level(index - 1), self.config.prune, self.settings, target
        )
        if self.processes.is_main:
            store_channels(level, channels)
            save_masks(level.mask_path, masks)
            write_json(level.schedule_path, record)
        self.processes.barrier()
        return masks, schedule

    def run_pruned_level(self, index: int, target: float | None) -> None:
        if self.run.level(index).finished:
            return
        masks, schedule = self.masks_for_level(index, target)
        if self.config.prune.level_start == "fine-tune":
            start = self.run.level(index - 1).state("raw")  # prune-then-fine-tune: no rewinding
        else:
            start = load_tensors(
                self.run.rewind_path,
                "rewind weights (theta_tau)",
                f"delete {self.run.level(0).dir} and re-run to recompute level 0 and theta_tau",
            )
        self.train_masked(index, masks, schedule, start, self.config.prune.strategy, {})

    def masked_trainer(self, index: int, masks, start_weights) -> Trainer:
        """A trainer for a pruned level: resumed from its checkpoint, or rewound to step tau."""
        sparse = 1 - count_kept(masks) / count_total(masks)
        # level k is the network after pruning round k: the bar names both, and how many rounds at most
        rounds = len(level_targets(self.config)[0]) if isinstance(self.config, LotteryConfig) else index
        trainer = self.trainer_for(
            self.run.level(index), None, f"level {index} · round {index}/{rounds} ({sparse:.1%} sparse)"
        )
        masks = self.tickets.training_masks(trainer.model, self.run.level(index), masks)
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
        channels, figures = self.tickets.level_note(self.run.level(index))
        extra = {**extra, **figures}
        self.log(
            f"level {index}: {channels}sparsity {1 - count_kept(masks) / count_total(masks):.4f}, "
            f"training steps {trainer.step}..{self.config.train.steps}"
        )
        self.train_level(trainer, index, masks, schedule, strategy, extra)
