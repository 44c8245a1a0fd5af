"""From unstructured tickets: channels a weight mask has emptied, and refilling.

:func:`emptied_channels` finds the channels an unstructured ticket has made dead (removable without
changing a single output); :func:`refill_channels` turns an unstructured ticket into a channel
ticket (Chen et al. 2022, "Coarsening the Granularity").
"""

from __future__ import annotations

import torch

from ddpm_lottery.pruning.channels.groups import ChannelGroup
from ddpm_lottery.pruning.channels.masks import ChannelMasks


def _dead_columns(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Which slices along ``dim`` of a weight mask hold no surviving weight."""
    other = [d for d in range(mask.dim()) if d != dim]
    return ~mask.any(dim=other) if other else ~mask


def emptied_channels(
    groups: list[ChannelGroup], weight_masks: dict[str, torch.Tensor], norms: dict[str, tuple[int, int]]
) -> ChannelMasks:
    """Channels an unstructured ticket has made dead, removable without changing a single output.

    A channel is dead when no surviving weight reads it (every input column it reaches is pruned;
    for attention dimensions also the key row, so the dropped score term is the same for every key).
    It can go exactly when, besides, every norm group it sits in is dead too: a norm's statistics
    include every channel of its group, pruned or not.  Each group keeps at least one channel.
    ``norms`` gives each GroupNorm's (groups, channels).
    """
    candidate: dict[str, torch.Tensor] = {}
    for g in groups:
        dead = torch.ones(g.channels, dtype=torch.bool)
        reads = [r for r in g.reach if r.role == "in"] + [
            r for r in g.reach if g.kind == "attention" and r.role == "out" and r.module.endswith("to_k")
        ]
        if not reads:
            dead[:] = False
        for r in reads:
            name = f"{r.module}.weight"
            if name not in weight_masks:  # a layer left dense reads every channel
                dead[:] = False
                continue
            empty = _dead_columns(weight_masks[name], 1 if r.role == "in" else 0)
            for channel, idx in r.pairs:
                dead[channel] &= bool(empty[idx])
        candidate[g.name] = dead
    # norm groups: dead only if every channel in them is
    positions: dict[str, dict[int, tuple[str, int]]] = {}
    for g in groups:
        for r in g.reach:
            if r.role == "norm":
                for channel, idx in r.pairs:
                    positions.setdefault(r.module, {})[idx] = (g.name, channel)
    removable = {name: mask.clone() for name, mask in candidate.items()}
    for module, where in positions.items():
        count, size = norms[module]
        per = size // count
        for idx, (name, channel) in where.items():
            start = (idx // per) * per
            if not all(i in where and candidate[where[i][0]][where[i][1]] for i in range(start, start + per)):
                removable[name][channel] = False
    out = {}
    for g in groups:
        kept = ~removable[g.name]
        if not bool(kept.any()):
            kept[0] = True
        out[g.name] = kept
    return out


def refill_channels(groups: list[ChannelGroup], weight_masks: dict[str, torch.Tensor]) -> ChannelMasks:
    """A channel ticket from an unstructured one (Chen et al. 2022, "Coarsening the Granularity"): in each
    group keep the channels holding the most surviving weights, as many as the group's weight density
    (in equal numbers per norm group or head, at least one), and make them whole again."""
    out = {}
    for g in groups:
        surviving = torch.zeros(g.channels)
        total = 0
        for r in g.reach:
            name = f"{r.module}.weight"
            if r.role != "out" or name not in weight_masks:
                continue
            mask = weight_masks[name]
            rows = mask.reshape(mask.shape[0], -1).sum(1).float()
            for channel, idx in r.pairs:
                surviving[channel] += rows[idx]
            total += mask[0].numel() * len(r.pairs)
        density = float(surviving.sum()) / total if total else 1.0
        keep = max(1, min(g.per_set, round(density * g.per_set)))
        order = torch.argsort(surviving.view(g.sets, g.per_set), dim=1, descending=True, stable=True)
        mask = torch.zeros(g.sets, g.per_set, dtype=torch.bool)
        mask.scatter_(1, order[:, :keep], True)
        out[g.name] = mask.view(-1)
    return out


__all__ = ["emptied_channels", "refill_channels"]
