"""The pruning strategies of the paper's method: which surviving weights one round removes.

Strategies (registry :data:`STRATEGIES`): each turns the previous masks and the trained
magnitudes into the next masks and reports the ratios it applied.  Ranking works on the
module map (:mod:`ddpm_lottery.pruning.modules`); the masks are those of
:mod:`ddpm_lottery.pruning.masks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm_lottery.pruning.masks import Masks, count_kept, count_total
from ddpm_lottery.pruning.modules import ModuleMap
from ddpm_lottery.utils.errors import UserError

# ----------------------------------------------------------------------------------------------
# Selecting the weights to prune


def _smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of exactly ``count`` smallest entries of a 1-D tensor (ties by position)."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if count <= 0:
        return chosen
    if count >= scores.numel():
        chosen[:] = True
        return chosen
    threshold = torch.kthvalue(scores, count).values
    below = scores < threshold
    chosen |= below
    missing = count - int(below.sum())
    if missing > 0:
        ties = torch.nonzero(scores == threshold).view(-1)[:missing]
        chosen[ties] = True
    return chosen


def prune_unit(masks: Masks, magnitudes: dict[str, torch.Tensor], names: list[str], count: int) -> None:
    """Remove the ``count`` smallest surviving magnitudes among ``names`` (ranked together).

    The largest surviving weight of every tensor is protected, so no layer ever collapses.
    """
    if count <= 0:
        return
    infinity = torch.tensor(float("inf"))
    parts = []
    for n in names:
        score = torch.where(masks[n], magnitudes[n].detach().abs().float().cpu(), infinity).view(-1)
        survivors = masks[n].view(-1)
        if bool(survivors.any()):
            keep = torch.argmax(torch.where(survivors, score, -infinity))
            score = score.clone()
            score[keep] = infinity
        parts.append(score)
    scores = torch.cat(parts)
    available = int(torch.isfinite(scores).sum())
    chosen = _smallest(scores, min(count, available))
    offset = 0
    for n in names:
        size = masks[n].numel()
        masks[n] &= ~chosen[offset : offset + size].view(masks[n].shape)
        offset += size


# ----------------------------------------------------------------------------------------------
# Strategies


@dataclass
class PruneSettings:
    prune_ratio: float = 0.2
    ratio_increment: float = 0.01
    order: str = "forward"
    max_round_ratio: float = 0.95
    min_module_density: float = 0.001


@dataclass
class Unit:
    """A group of tensors ranked together, with how many of its survivors a round removes."""

    name: str
    tensors: list[str]
    survivors: int
    ratio: float
    floor: int  # survivors that must remain

    @property
    def removable(self) -> int:
        return max(0, self.survivors - self.floor)

    def planned(self) -> int:
        return min(self.removable, round(self.ratio * self.survivors))


def _floor(size: int, density: float, tensors: int) -> int:
    # keep at least one weight per tensor so no layer collapses, and the module's density floor
    return max(tensors, math.ceil(density * size))


def _plan_unified(mmap: ModuleMap, masks: Masks, kept: dict[str, int], settings: PruneSettings) -> list[Unit]:
    return [
        Unit(
            n,
            [n],
            kept[n],
            min(settings.prune_ratio, settings.max_round_ratio),
            _floor(masks[n].numel(), settings.min_module_density, 1),
        )
        for n in mmap.tensor_names
    ]


def _plan_global(mmap: ModuleMap, masks: Masks, kept: dict[str, int], settings: PruneSettings) -> list[Unit]:
    names = mmap.tensor_names
    return [
        Unit(
            "global",
            names,
            sum(kept[n] for n in names),
            min(settings.prune_ratio, settings.max_round_ratio),
            sum(_floor(masks[n].numel(), settings.min_module_density, 1) for n in names),
        )
    ]


def _plan_varying(mmap: ModuleMap, masks: Masks, kept: dict[str, int], settings: PruneSettings) -> list[Unit]:
    modules = mmap.modules if settings.order == "forward" else list(reversed(mmap.modules))
    units = []
    for j, module in enumerate(modules):
        ratio = min(settings.prune_ratio + j * settings.ratio_increment, settings.max_round_ratio)
        units.append(
            Unit(
                module.name,
                module.tensors,
                sum(kept[n] for n in module.tensors),
                ratio,
                _floor(module.size, settings.min_module_density, len(module.tensors)),
            )
        )
    return units


@dataclass(frozen=True)
class Strategy:
    """A pruning strategy: how one round splits into units ranked together, and at which ratios.

    ``reads`` names the prune settings it uses beyond the shared ones (p, the cap, the floor), so
    that help texts and study files can say which settings matter for which strategy.
    """

    name: str
    description: str
    plan: Callable[[ModuleMap, Masks, dict[str, int], PruneSettings], list[Unit]]
    reads: tuple[str, ...] = ()
    imposes_profile: bool = False  # does the strategy itself set an upstream/downstream sparsity profile?


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "unified",
            "every prunable tensor loses the same fraction p of its surviving weights per round",
            _plan_unified,
        ),
        Strategy(
            "global", "one magnitude threshold over all prunable weights removes p of the survivors", _plan_global
        ),
        Strategy(
            "varying",
            "Algorithm 1: module j (forward order) loses p + j*q of its survivors, capped, with a floor",
            _plan_varying,
            reads=("ratio_increment", "order", "granularity"),
            imposes_profile=True,
        ),
    )
}


def plan_units(strategy: str, mmap: ModuleMap, masks: Masks, settings: PruneSettings) -> list[Unit]:
    """The units and ratios of one round (before trimming to the target)."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    kept = {n: int(masks[n].sum()) for n in masks}
    return STRATEGIES[strategy].plan(mmap, masks, kept, settings)


def allocate(units: list[Unit], budget: int | None) -> list[int]:
    """Counts per unit: the planned ones, scaled down proportionally when they exceed ``budget``.

    A shortfall no larger than the number of units (per-unit rounding of the ratios) is topped up
    one weight per unit, so a schedule that nominally reaches the target meets it exactly.
    """
    planned = [u.planned() for u in units]
    total = sum(planned)
    if budget is None:
        return planned
    if total <= budget:
        shortfall = budget - total
        if 0 < shortfall <= len(units):
            for i in sorted(range(len(units)), key=lambda i: units[i].removable - planned[i], reverse=True):
                if shortfall == 0:
                    break
                if planned[i] < units[i].removable:
                    planned[i] += 1
                    shortfall -= 1
        return planned
    exact = [p * budget / total for p in planned]
    counts = [math.floor(e) for e in exact]
    remainder = budget - sum(counts)
    by_fraction = sorted(range(len(units)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_fraction[:remainder]:
        counts[i] += 1
    return counts


def prune_round(
    strategy: str,
    mmap: ModuleMap,
    masks: Masks,
    magnitudes: dict[str, torch.Tensor],
    settings: PruneSettings,
    target_sparsity: float | None = None,
) -> tuple[Masks, list[dict]]:
    """One pruning round; returns the new masks (the old ones are untouched) and the schedule applied."""
    new = {n: m.clone() for n, m in masks.items()}
    units = plan_units(strategy, mmap, new, settings)
    budget = None
    if target_sparsity is not None:
        total = count_total(new)
        budget = max(0, math.ceil(target_sparsity * total - 1e-9) - (total - count_kept(new)))
    counts = allocate(units, budget)
    applied = []
    for unit, count in zip(units, counts):
        prune_unit(new, magnitudes, unit.tensors, count)
        applied.append(
            {
                "unit": unit.name,
                "survivors_before": unit.survivors,
                "ratio_planned": unit.ratio,
                "removed": count,
                "ratio_applied": count / unit.survivors if unit.survivors else 0.0,
                "floor": unit.floor,
            }
        )
    return new, applied


def random_masks(reference: Masks, seed: int) -> Masks:
    """Random masks with exactly the per-tensor densities of ``reference`` (the random-pruning control)."""
    return _random_keep({name: (ref.shape, int(ref.sum())) for name, ref in reference.items()}, seed)


def random_masks_at(shapes: dict[str, torch.Size], density: float, seed: int) -> Masks:
    """Random masks keeping ``density`` of every tensor (at least one weight each): a ticket of that density
    with no search behind it, as a cost estimate times."""
    return _random_keep(
        {name: (shape, max(1, round(density * math.prod(shape)))) for name, shape in shapes.items()}, seed
    )


def _random_keep(keeps: dict[str, tuple[torch.Size, int]], seed: int) -> Masks:
    """For each tensor (name -> (shape, how many to keep)), that many positions drawn at random, in name order."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(keeps):
        shape, keep = keeps[name]
        order = torch.randperm(math.prod(shape), generator=generator)
        flat = torch.zeros(math.prod(shape), dtype=torch.bool)
        flat[order[:keep]] = True
        out[name] = flat.view(shape)
    return out


def simulate_sparsity(strategy: str, mmap: ModuleMap, settings: PruneSettings, rounds: int) -> float:
    """Sparsity reached after ``rounds`` rounds, from counts alone (no magnitudes needed)."""
    kept = {n: s for m in mmap.modules for n, s in zip(m.tensors, m.sizes)}
    total = sum(kept.values())
    size = dict(kept)
    for _ in range(rounds):
        fake = {n: _CountMask(kept[n], size[n]) for n in kept}
        units = plan_units(strategy, mmap, fake, settings)
        for unit in units:
            removed = unit.planned()
            unit_total = sum(kept[n] for n in unit.tensors)
            # spread the removal over the unit's tensors in proportion (exact for totals)
            for n in unit.tensors:
                share = removed * kept[n] / unit_total if unit_total else 0
                kept[n] = max(1, kept[n] - share)
    return 1 - sum(kept.values()) / total


class _CountMask:
    """Stand-in for a mask that only knows how many weights survive (for simulate_sparsity)."""

    def __init__(self, kept: float, size: int):
        self._kept, self._size = kept, size

    def sum(self):
        return self._kept

    def numel(self):
        return self._size
