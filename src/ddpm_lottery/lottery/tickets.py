"""What a ticket is made of: single weights, or whole channels.  One object per kind, chosen once per run.

The lottery loop is the same for both kinds: prune the previous level, rewind, train, store.  What
differs is the unit that is pruned and everything that follows from it, and that lives here:

* :class:`WeightTickets` (``--structure weight``, the paper's method): a mask per prunable weight;
  a level's sparsity is the fraction of prunable weights removed.
* :class:`ChannelTickets` (``--structure channel``): whole channel groups are removed
  (:mod:`ddpm_lottery.pruning.channels`); the weight masks follow from the kept channels, the
  biases and norm scales of removed channels are masked too, the group norms see survivors only,
  and every trained level is compacted into a smaller network that computes the same thing.
  A level's search sparsity is its channel sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from ddpm_lottery.lottery.networks import level_channel_masks, level_masks
from ddpm_lottery.models.families import family_of
from ddpm_lottery.pruning.channels.compact import (
    compact,
    compaction_error,
    save_compact,
)
from ddpm_lottery.pruning.channels.groups import channel_groups, save_groups
from ddpm_lottery.pruning.channels.masks import (
    channel_sparsity,
    full_channel_masks,
    install_kept_norms,
    load_channel_masks,
    parameter_masks,
    save_channel_masks,
    weight_masks,
)
from ddpm_lottery.pruning.channels.rounds import (
    max_channel_sparsity,
    prune_channels,
    random_channel_masks,
    simulate_channel_sparsity,
)
from ddpm_lottery.pruning.channels.unstructured import refill_channels
from ddpm_lottery.pruning.masks import (
    count_kept,
    count_total,
    load_masks,
    masks_of_shapes,
)
from ddpm_lottery.pruning.modules import ModuleMap
from ddpm_lottery.pruning.strategies import (
    PruneSettings,
    plan_units,
    prune_round,
    random_masks,
    simulate_sparsity,
)
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.records import PruningSchedule, read_record
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import make_dirs


class WeightTickets:
    """Unstructured tickets: the paper's masks, one bit per prunable weight."""

    structure = "weight"

    def __init__(self, mmap: ModuleMap):
        self.mmap = mmap

    def store_with_run(self, run: Run) -> None:
        """What the run folder needs besides its module map (nothing for weight tickets)."""

    def search_sparsity(self, metrics: dict) -> float:
        """What levels are pruned towards: the fraction of prunable weights removed."""
        return metrics["sparsity"]

    def reached(self, metrics: dict, final: float) -> bool:
        """Has a finished level reached the search's final target?  (Half a weight of slack.)"""
        return metrics["sparsity"] >= final - 0.5 / metrics["prunable_parameters"]

    def check_reachable(self, prune, settings: PruneSettings, final: float) -> None:
        pc = prune
        floor_total = sum(max(len(m.tensors), math.ceil(pc.min_module_density * m.size)) for m in self.mmap.modules)
        prunable = sum(m.size for m in self.mmap.modules)
        if final > 1 - floor_total / prunable:
            raise UserError(
                f"target sparsity {final} is beyond what the floor allows "
                f"({1 - floor_total / prunable:.4f}); lower the target or --min-module-density"
            )
        if pc.one_shot or pc.sparsity_schedule:
            return  # the ratios are scaled to reach each level's target
        reached = simulate_sparsity(pc.strategy, self.mmap, settings, pc.max_rounds)
        # per-unit rounding is topped up in the last round: allow one weight per unit of slack
        slack = len(plan_units(pc.strategy, self.mmap, masks_of_shapes(self.mmap.shapes), settings)) / prunable
        if reached + slack < pc.target_sparsity:
            rounds = next(
                (
                    r
                    for r in range(pc.max_rounds, 400)
                    if simulate_sparsity(pc.strategy, self.mmap, settings, r) >= pc.target_sparsity
                ),
                None,
            )
            hint = f"raise --max-rounds to {rounds}" if rounds else "raise --prune-ratio"
            raise UserError(
                f"target sparsity {pc.target_sparsity} cannot be reached: {pc.max_rounds} rounds of "
                f"{pc.strategy} with p={pc.prune_ratio} reach {reached:.4f}; {hint}"
            )

    def prune(
        self, index: int, previous: Level, prune, settings: PruneSettings, target: float | None
    ) -> tuple[dict, list[dict], dict | None, dict]:
        """Prune the previous level into level ``index``: (weight masks, per-unit schedule, kept channels or
        None, the level's schedule.json record)."""
        prev_masks = load_masks(previous.mask_path, self.mmap.shapes)
        scaled = settings
        if target is not None and (prune.one_shot or prune.sparsity_schedule):
            scaled = scaled_settings(prune.strategy, self.mmap, prev_masks, settings, target)
        masks, schedule = prune_round(
            prune.strategy, self.mmap, prev_masks, previous.state(prune.magnitudes), scaled, target
        )
        record = {
            "level": index,
            "strategy": prune.strategy,
            "order": prune.order,
            "magnitudes": prune.magnitudes,
            "target": target,
            "ratios_scaled_to_target": scaled != settings,
            "schedule": schedule,
        }
        return masks, schedule, None, record

    def training_masks(self, model: torch.nn.Module, level: Level, masks: dict, channels: dict | None = None) -> dict:
        """The masks the trainer holds at zero (the weight masks themselves); ``channels``: a channel
        ticket's kept channels, when they are at hand (else read from the level)."""
        return masks

    def level_note(self, level: Level) -> tuple[str, dict]:
        """A line for the log and the figures metrics.json adds for this kind (none for weights)."""
        return "", {}

    def level_structure(self, trained: Callable[[], torch.nn.Module], level: Level, total_params: int) -> dict:
        """What a trained level stores besides its weights (nothing for weight tickets); ``trained()`` builds
        the level's network with its EMA weights."""
        return {}

    def control_masks(self, control: str, source: Level, seed: int) -> tuple[dict, dict | None]:
        """A control's masks at one level of its ticket run: (weight masks, kept channels or None)."""
        masks = level_masks(source)
        return (masks if control == "reinit" else random_masks(masks, seed=seed)), None


class ChannelTickets(WeightTickets):
    """Structured tickets: whole channel groups, so that a level also runs as a smaller network."""

    structure = "channel"

    def __init__(self, mmap: ModuleMap, groups):
        super().__init__(mmap)
        self.groups = groups

    @classmethod
    def of(cls, model: torch.nn.Module, mmap: ModuleMap, prune) -> ChannelTickets:
        return cls(mmap, channel_groups(model, prune.include, prune.exclude, prune.channel_scope))

    def store_with_run(self, run: Run) -> None:
        if not run.channel_groups_path.exists():
            save_groups(run.channel_groups_path, self.groups)

    def search_sparsity(self, metrics: dict) -> float:
        # a dense level 0 reused from a weight search (--dense-from) has no channel figures: it has every channel
        return metrics.get("channel_sparsity", metrics["sparsity"])

    def reached(self, metrics: dict, final: float) -> bool:
        return self.search_sparsity(metrics) >= final - 1e-9

    def check_reachable(self, prune, settings: PruneSettings, final: float) -> None:
        ceiling = max_channel_sparsity(self.groups, settings)
        if final > ceiling:
            raise UserError(
                f"channel sparsity {final} is beyond what this network allows ({ceiling:.4f}: every "
                "channel group keeps at least one channel per norm group or head); lower the target"
            )
        pc = prune
        if pc.one_shot or pc.sparsity_schedule:
            return
        reached = simulate_channel_sparsity(pc.strategy, self.groups, settings, pc.max_rounds)
        if reached < final:
            raise UserError(
                f"channel sparsity {final} cannot be reached: {pc.max_rounds} rounds of {pc.strategy} "
                f"with p={pc.prune_ratio} reach {reached:.4f} (channels move a norm group's worth at a "
                "time); raise --prune-ratio or --max-rounds, or give --sparsity-schedule"
            )

    def prune(
        self, index: int, previous: Level, prune, settings: PruneSettings, target: float | None
    ) -> tuple[dict, list[dict], dict | None, dict]:
        before = (
            load_channel_masks(previous.channels_path, self.groups)
            if previous.channels_path.exists() or previous.index > 0
            else full_channel_masks(self.groups)
        )
        channels, schedule = prune_channels(
            prune.strategy, self.groups, before, previous.state(prune.magnitudes), settings, target
        )
        masks = weight_masks(self.groups, channels, self.mmap.shapes)
        record = {
            "level": index,
            "strategy": prune.strategy,
            "order": prune.order,
            "structure": "channel",
            "magnitudes": prune.magnitudes,
            "target": target,
            "criterion": "mean |w| of each channel's rows in its producers",
            "schedule": schedule,
        }
        return masks, schedule, channels, record

    def training_masks(self, model: torch.nn.Module, level: Level, masks: dict, channels: dict | None = None) -> dict:
        # biases and norm scales of removed channels are masked too, and the norms see survivors only
        channels = level_channel_masks(level) if channels is None else channels
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        install_kept_norms(model, self.groups, channels)
        return {**masks, **parameter_masks(self.groups, channels, shapes)}

    def level_note(self, level: Level) -> tuple[str, dict]:
        sparsity = channel_sparsity(self.groups, level_channel_masks(level))
        stored = (
            read_record(
                level.schedule_path, PruningSchedule, "pruning schedule", f"delete {level.dir} and re-run the search"
            ).get("target")
            if level.schedule_path.exists()
            else None
        )
        # the level's target (it lands on the first achievable sparsity at or above it), else what it reached
        return f"channel sparsity {sparsity:.4f}, ", {"channel_target": stored if stored is not None else sparsity}

    def level_structure(self, trained: Callable[[], torch.nn.Module], level: Level, total_params: int) -> dict:
        """Compact the trained level into a smaller network, check it, save it beside the level."""
        if not level.channels_path.exists():  # level 0: every channel
            save_channel_masks(level.channels_path, full_channel_masks(self.groups))
        masks = level_channel_masks(level)
        masked = trained()
        install_kept_norms(masked, self.groups, masks)
        small = compact(masked, self.groups, masks)
        error = compaction_error(masked, small)
        save_compact(level.compact_spec_path, level.compact_path, small, "ema")
        compact_params = sum(p.numel() for p in small.parameters())
        return {
            "structure": "channel",
            "channel_sparsity": channel_sparsity(self.groups, masks),
            "channels_kept": {g.name: int(masks[g.name].sum()) for g in self.groups},
            "channels_total": sum(g.channels for g in self.groups),
            "compact": {
                "parameters": compact_params,
                "parameter_ratio": compact_params / total_params,
                "max_abs_difference": error,
                "probe": "2 images of N(0, 1) noise, timesteps 1 and 999",
                "weights": "ema",
            },
        }

    def control_masks(self, control: str, source: Level, seed: int) -> tuple[dict, dict | None]:
        if control == "refill":  # channel tickets refilled from an unstructured ticket's masks
            channels = refill_channels(self.groups, level_masks(source))
        else:
            channels = load_channel_masks(source.channels_path, self.groups)
            if control == "random":
                channels = random_channel_masks(self.groups, channels, seed=seed)
        return weight_masks(self.groups, channels, self.mmap.shapes), channels


def scaled_settings(strategy: str, mmap: ModuleMap, masks, settings: PruneSettings, target: float) -> PruneSettings:
    """Scale the schedule's ratios (p and q alike) so that one round reaches ``target``.

    Scaling p and q together keeps the strategy's profile (varying still prunes downstream
    modules more).  The per-module cap stays the user's, raised to the target itself when it is
    lower (a one-shot unified prune to 99 % needs a 99 % ratio), and to 100 % only if needed.
    """
    total = count_total(masks)
    needed = math.ceil(target * total) - (total - count_kept(masks))

    def planned(scale: float, cap: float) -> int:
        trial = replace(
            settings,
            prune_ratio=settings.prune_ratio * scale,
            ratio_increment=settings.ratio_increment * scale,
            max_round_ratio=cap,
        )
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
    return replace(
        settings,
        prune_ratio=settings.prune_ratio * high,
        ratio_increment=settings.ratio_increment * high,
        max_round_ratio=cap,
    )


def tickets_for(model: torch.nn.Module, mmap: ModuleMap, prune) -> WeightTickets:
    """The kind of ticket a run's ``--structure`` asks for (a training run, without prune settings: weights)."""
    if prune is not None and prune.structure == "channel":
        family = family_of(model)
        if not family.channel_tickets:
            raise UserError(
                f"--structure channel prunes a U-Net's channels; a {family.class_name}'s heads and MLP width "
                "are not channel groups yet; use --structure weight"
            )
        if family.num_classes(model.config):
            # the label table adds into the time embedding: its rows would have to lose the channels that loses
            raise UserError(
                "--structure channel does not prune class-conditional networks yet (their label table feeds "
                "the time embedding's channels); use --structure weight"
            )
        return ChannelTickets.of(model, mmap, prune)
    return WeightTickets(mmap)


def store_channels(level: Level, channels: dict | None) -> None:
    """A channel ticket's kept channels beside its level (main process; nothing for weight tickets)."""
    if channels is not None:
        make_dirs(level.dir)
        save_channel_masks(level.channels_path, channels)
