"""Scores and one pruning round of a channel ticket.

The criterion is the mean absolute weight of a channel's rows in its producers (the L1 filter norm
per weight, comparable across layers for the global strategy).  Channels move in *slots*: slot r of
a group of channels is the r-th weakest survivor of every norm group (or attention head), so every
norm group keeps the same number of channels.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ddpm_lottery.pruning.channels.groups import ChannelGroup
from ddpm_lottery.pruning.channels.masks import ChannelMasks
from ddpm_lottery.pruning.strategies import PruneSettings
from ddpm_lottery.utils.errors import UserError


def max_channel_sparsity(groups: list[ChannelGroup], settings: PruneSettings) -> float:
    total = sum(g.channels for g in groups)
    return 1 - sum(_floor_slots(g, settings) * g.sets for g in groups) / total


def _floor_slots(group: ChannelGroup, settings: PruneSettings) -> int:
    return max(1, math.ceil(settings.min_module_density * group.per_set))


def channel_scores(group: ChannelGroup, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean |w| of each channel's rows over the layers that output it."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    count = 0
    for r in group.reach:
        if r.role != "out":
            continue
        w = weights[f"{r.module}.weight"].detach().double().cpu().abs()
        sums = w.reshape(w.shape[0], -1).sum(1)
        for channel, idx in r.pairs:
            total[channel] += sums[idx]
        count += w[0].numel()
    return (total / count).float()


def _slot_scores(group: ChannelGroup, mask: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot scores ascending, per-set channel order): slot r is the r-th weakest survivor of every set."""
    m = mask.view(group.sets, group.per_set)
    s = torch.where(m, score.view(group.sets, group.per_set), torch.tensor(float("inf")))
    order = torch.argsort(s, dim=1, stable=True)
    survivors = int(m[0].sum())
    ranked = torch.gather(s, 1, order)[:, :survivors]
    return ranked.mean(0), order


def _planned(
    groups: list[ChannelGroup], slots: dict[str, torch.Tensor], strategy: str, settings: PruneSettings
) -> dict[str, int]:
    """Slots each group loses under ``settings`` (before any target)."""
    cap = settings.max_round_ratio
    removable = {g.name: max(0, len(slots[g.name]) - _floor_slots(g, settings)) for g in groups}
    if strategy == "global":
        survivors = sum(len(slots[g.name]) * g.sets for g in groups)
        goal = min(settings.prune_ratio, cap) * survivors
        pool = sorted((float(slots[g.name][r]), g.index, r, g) for g in groups for r in range(removable[g.name]))
        counts = {g.name: 0 for g in groups}
        removed = 0
        for _, _, _, g in pool:
            if removed >= goal - 1e-9:
                break
            counts[g.name] += 1
            removed += g.sets
        return counts
    ordered = groups if settings.order == "forward" else list(reversed(groups))
    counts = {}
    for j, g in enumerate(ordered):
        ratio = settings.prune_ratio + (j * settings.ratio_increment if strategy == "varying" else 0.0)
        counts[g.name] = min(removable[g.name], round(min(ratio, cap) * len(slots[g.name])))
    return counts


def simulate_channel_sparsity(strategy: str, groups: list[ChannelGroup], settings: PruneSettings, rounds: int) -> float:
    """Channel sparsity after ``rounds`` rounds, from counts alone (the scores only reorder removals)."""
    slots = {g.name: torch.zeros(g.per_set) for g in groups}
    for _ in range(rounds):
        counts = _planned(groups, slots, strategy, settings)
        if not any(counts.values()):
            break
        slots = {g.name: torch.zeros(len(slots[g.name]) - counts[g.name]) for g in groups}
    return 1 - sum(len(slots[g.name]) * g.sets for g in groups) / sum(g.channels for g in groups)


def prune_channels(
    strategy: str,
    groups: list[ChannelGroup],
    masks: ChannelMasks,
    weights: dict[str, torch.Tensor],
    settings: PruneSettings,
    target: float | None = None,
) -> tuple[ChannelMasks, list[dict]]:
    """One round: each group loses its weakest slots; with ``target``, p and q are scaled to reach it.

    The target is a channel sparsity over all groups; slots move whole norm groups' worth of channels,
    so the level lands on the first achievable sparsity at or above it (recorded in the schedule).
    """
    if strategy not in ("unified", "global", "varying"):
        raise UserError(f"unknown strategy {strategy!r} for channel tickets; choose unified, global or varying")
    scored = {g.name: _slot_scores(g, masks[g.name], channel_scores(g, weights)) for g in groups}
    slots = {name: s for name, (s, _) in scored.items()}
    counts = _planned(groups, slots, strategy, settings)
    if target is not None:
        total = sum(g.channels for g in groups)
        needed = math.ceil(target * total - 1e-9) - (total - sum(int(masks[g.name].sum()) for g in groups))

        def removed(scale: float, cap: float) -> tuple[int, dict[str, int]]:
            trial = replace(
                settings,
                prune_ratio=settings.prune_ratio * scale,
                ratio_increment=settings.ratio_increment * scale,
                max_round_ratio=cap,
            )
            c = _planned(groups, slots, strategy, trial)
            return sum(c[g.name] * g.sets for g in groups), c

        ceiling = 2.0 / max(settings.prune_ratio, 1e-6)
        cap = max(settings.max_round_ratio, target)
        if removed(ceiling, cap)[0] < needed:
            cap = 1.0
        if removed(ceiling, cap)[0] < needed:
            raise UserError(
                f"channel sparsity {target} cannot be reached: every group keeps at least one channel "
                f"per norm group (at most {max_channel_sparsity(groups, settings):.4f}); lower the target"
            )
        low, high = 0.0, ceiling
        for _ in range(60):
            mid = (low + high) / 2
            if removed(mid, cap)[0] >= needed:
                high = mid
            else:
                low = mid
        counts = removed(high, cap)[1]
    new, applied = {}, []
    for g in groups:
        _, order = scored[g.name]
        k = counts[g.name]
        mask = masks[g.name].clone().view(g.sets, g.per_set)
        if k:
            mask.scatter_(1, order[:, :k], False)
        new[g.name] = mask.view(-1)
        survivors = len(slots[g.name]) * g.sets
        applied.append(
            {
                "unit": g.name,
                "survivors_before": survivors,
                "removed": k * g.sets,
                "ratio_applied": k * g.sets / survivors if survivors else 0.0,
                "channels_kept": int(new[g.name].sum()),
            }
        )
    return new, applied


def random_channel_masks(groups: list[ChannelGroup], reference: ChannelMasks, seed: int) -> ChannelMasks:
    """Random channels with the reference's survivors per norm group (the random-mask control)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for g in groups:
        keep = int(reference[g.name].view(g.sets, g.per_set)[0].sum())
        mask = torch.zeros(g.sets, g.per_set, dtype=torch.bool)
        for row in range(g.sets):
            mask[row, torch.randperm(g.per_set, generator=generator)[:keep]] = True
        out[g.name] = mask.view(-1)
    return out


__all__ = [
    "channel_scores",
    "max_channel_sparsity",
    "prune_channels",
    "random_channel_masks",
    "simulate_channel_sparsity",
]
