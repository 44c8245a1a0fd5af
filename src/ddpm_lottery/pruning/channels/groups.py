"""Structured (channel) tickets: which channels can go, masking them exactly, and compacting the network.

A *channel group* is a set of channels that can be removed from a ``UNet2DModel`` without touching
the residual stream, so that the smaller network computes exactly what the masked one does:

* **resnet**: the inner width of a ResNet block: ``conv1``'s filters, the matching rows of
  ``time_emb_proj`` (added to them), ``norm2``'s channels and ``conv2``'s input columns;
* **attention**: the inner dimensions of an attention block: rows of ``to_q``, ``to_k``, ``to_v``
  and columns of ``to_out.0`` (Torch-Pruning's dependency graph couples all four);
* **time**: the hidden units of the time embedding (``linear_1`` rows, ``linear_2`` columns).

Residual-stream channels (block outputs, skip concatenations, samplers, ``conv_in``/``conv_out``)
stay whole.  Their group norms straddle concatenated skips, so removing one of them changes the
statistics every other channel of its group is normalised by: no compaction can then equal the
trained network.  Diff-Pruning prunes them anyway and fine-tunes the difference away; here a
compacted ticket *is* the ticket that was trained and measured.

Two rules make compaction exact:

* ``norm2`` normalises each of its groups over the channels that survive (:class:`KeptChannelGroupNorm`,
  used while a channel ticket trains and whenever it is evaluated), and every group loses the same
  number of channels, so the compacted ``GroupNorm(G, C')`` has the same groups.  Channels therefore
  move in *slots*: slot r of a group of channels is the r-th weakest survivor of every norm group (or
  attention head).
* Attention scores use ``1/sqrt(head_dim)``; diffusers takes it from the tensor, so compaction folds
  ``sqrt(d'/d)`` into ``to_q``.

The criterion is the mean absolute weight of a channel's rows in its producers (the L1 filter norm
per weight, comparable across layers for the global strategy).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, read_json, save_tensors, write_json
from ddpm_lottery.pruning.masks import PruneSettings, execution_order

STRUCTURES = ("weight", "channel")
ChannelMasks = dict[str, torch.Tensor]  # channel group name -> bool (channels,)


@dataclass(frozen=True)
class Reach:
    """One layer a channel group touches: its output rows, input columns, or norm channels."""

    module: str
    role: str  # out (weight rows and bias) | in (weight columns) | norm (GroupNorm scale and shift)
    # (channel of the group, index in the layer) pairs: a channel may reach a layer twice, when a skip
    # concatenation joins two ends of one stream
    pairs: tuple[tuple[int, int], ...]

    def layer_indices(self, channels: torch.Tensor) -> torch.Tensor:
        """The layer's indices of the given channels of the group."""
        chosen = set(channels.tolist())
        return torch.tensor([idx for channel, idx in self.pairs if channel in chosen], dtype=torch.long)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removable together with every layer they touch (one of Torch-Pruning's dependency groups)."""

    name: str  # the owning module for inner widths (down_blocks.0.resnets.0), stream:<first layer> for streams
    kind: str  # resnet | attention | time | stream
    root: str  # the first layer, in forward order, whose output channels these are
    reach: tuple[Reach, ...]
    channels: int
    sets: int  # norm groups (resnet) or heads (attention): every set keeps the same number of channels
    index: int = 0  # forward-execution order among the groups: j of the varying schedule

    @property
    def per_set(self) -> int:
        return self.channels // self.sets

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(r.module for r in self.reach if r.role == "out")

    @property
    def norm(self) -> str | None:
        """The norm of an inner width (resnet: norm2), whose groups the slots follow."""
        if self.kind != "resnet":
            return None
        return next(r.module for r in self.reach if r.role == "norm")

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "root": self.root, "channels": self.channels, "sets": self.sets,
                "index": self.index, "reach": [[r.module, r.role, [list(p) for p in r.pairs]] for r in self.reach]}

    @classmethod
    def from_json(cls, data: dict) -> "ChannelGroup":
        reach = tuple(Reach(m, role, tuple((int(c), int(i)) for c, i in pairs)) for m, role, pairs in data["reach"])
        return cls(data["name"], data["kind"], data["root"], reach, data["channels"], data["sets"], data["index"])


SCOPES = ("all", "inner")


def channel_groups(model: torch.nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                   scope: str = "all") -> list[ChannelGroup]:
    """The channel groups of a ``UNet2DModel``, in forward-execution order.

    ``scope`` "inner": ResNet inner widths, attention dimensions, time-embedding units; "all" adds the
    residual streams (block outputs, skips, samplers, conv_in) and the time embedding's output.
    The include/exclude patterns match a group's first layer's weight.
    """
    import fnmatch

    from diffusers.models.attention_processor import Attention

    if scope not in SCOPES:
        raise UserError(f"unknown channel scope {scope!r}; choose one of {', '.join(SCOPES)}")
    from diffusers.models.resnet import ResnetBlock2D

    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock2D) and module.time_embedding_norm != "default":
            raise UserError(f"{name}: --structure channel supports ResNet blocks with the default time embedding "
                            "norm; use --structure weight for this network")
        if isinstance(module, Attention) and (module.is_cross_attention or module.to_q.out_features % module.heads):
            raise UserError(f"{name}: --structure channel supports self-attention with equal heads only")
    plain = _with_plain_norms(copy.deepcopy(model)).eval()
    graph = _dependency_graph(plain)
    names = {module: name for name, module in plain.named_modules()}
    order = {layer: i for i, layer in enumerate(execution_order(plain))}
    found = []
    for group in graph.get_all_groups(ignored_layers=[plain.conv_out], root_module_types=(torch.nn.Conv2d, torch.nn.Linear)):
        reach: dict[tuple[str, str], set[tuple[int, int]]] = {}
        channels = len(group[0].idxs)
        for item in group:
            module = item.dep.target.module
            if isinstance(module, torch.nn.GroupNorm):
                role = "norm"
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            else:
                continue  # element-wise operations, reshapes: no parameters
            pairs = reach.setdefault((names[module], role), set())
            pairs.update((int(root_idx), int(idx)) for idx, root_idx in zip(item.idxs, item.root_idxs))
        entries = tuple(Reach(m, role, tuple(sorted(pairs))) for (m, role), pairs in sorted(reach.items()))
        outs = sorted((r.module for r in entries if r.role == "out"), key=lambda m: order.get(m, 10**9))
        if not outs:
            continue
        kind, name, sets = _classify(plain, entries, outs)
        if scope == "inner" and kind == "stream":
            continue
        found.append(ChannelGroup(name, kind, outs[0], entries, channels, sets))
    for group in found:
        if group.channels % group.sets:
            raise UserError(f"{group.norm or group.name}: {group.channels} channels do not split into {group.sets} "
                            "equal groups; change --norm-num-groups or --block-out-channels")

    def kept(group: ChannelGroup) -> bool:
        root = f"{group.root}.weight"
        if include and not any(fnmatch.fnmatchcase(root, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(root, p) for p in exclude)

    found = sorted((g for g in found if kept(g)), key=lambda g: order[g.root])
    if not found:
        raise UserError("no channel group is left to prune (the include/exclude patterns match their first "
                        "layers); loosen them")
    return [replace(g, index=i) for i, g in enumerate(found)]


def _dependency_graph(model: torch.nn.Module):
    """Torch-Pruning's dependency graph of ``model`` (plain norms), or one line saying it could not be traced."""
    import torch_pruning as tp

    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs(model))
    except Exception as exc:  # the tracer's failures are many and internal: name the network, not the stack
        raise UserError(f"Torch-Pruning could not trace this network ({type(exc).__name__}: {exc}); channel tickets "
                        "need a UNet2DModel that runs on one (sample, timestep) pair") from None


def _classify(model: torch.nn.Module, reach: tuple[Reach, ...], outs: list[str]) -> tuple[str, str, int]:
    """(kind, name, sets) of a dependency group from the layers it touches."""
    roles = {(r.module.rsplit(".", 1)[-1], r.role) for r in reach}
    first = outs[0]
    owner = first.rsplit(".", 1)[0]
    if ("conv1", "out") in roles and ("norm2", "norm") in roles:
        return "resnet", owner, model.get_submodule(f"{owner}.norm2").num_groups
    if ("to_q", "out") in roles:
        return "attention", owner, model.get_submodule(owner).heads
    if ("linear_1", "out") in roles:
        return "time", owner, 1
    return "stream", f"stream:{first}", 1


def _with_plain_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Kept-channel norms swapped back for plain GroupNorms (same parameters), as the tracer expects."""
    for name, module in list(model.named_modules()):
        if isinstance(module, KeptChannelGroupNorm):
            parent_name, _, attr = name.rpartition(".")
            plain = torch.nn.GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine)
            plain.weight, plain.bias = module.weight, module.bias
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, plain)
    return model


def save_groups(path: Path, groups: list[ChannelGroup]) -> None:
    write_json(path, {"format": "ddpm-lottery channel groups v1: each group's channels and, per layer it reaches, "
                                "the layer's index of each channel (out = weight rows and bias, in = weight columns, "
                                "norm = GroupNorm channels)", "groups": [g.to_json() for g in groups]})


def load_groups(path: Path) -> list[ChannelGroup]:
    return [ChannelGroup.from_json(g) for g in read_json(path, "channel groups")["groups"]]


# ----------------------------------------------------------------------------------------------
# Channel masks and what they mean for weights


def full_channel_masks(groups: list[ChannelGroup]) -> ChannelMasks:
    return {g.name: torch.ones(g.channels, dtype=torch.bool) for g in groups}


def check_channel_masks(groups: list[ChannelGroup], masks: ChannelMasks, where: str, even: bool = True) -> None:
    """Every group present, of its size, with survivors; with ``even``, the same number in every set."""
    for g in groups:
        mask = masks.get(g.name)
        if mask is None or mask.shape != (g.channels,):
            raise UserError(f"{where}: channel mask of {g.name} is missing or not {g.channels} long; it belongs to "
                            "another network")
        if not even:
            if not bool(mask.any()):
                raise UserError(f"{where}: {g.name} keeps no channel; every channel group keeps at least one")
            continue
        counts = mask.view(g.sets, g.per_set).sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise UserError(f"{where}: {g.norm or g.name} keeps {counts.tolist()} channels per group; a channel ticket "
                            f"keeps the same number (at least one) in each of its {g.sets} groups")


def save_channel_masks(path: Path, masks: ChannelMasks) -> None:
    save_tensors(path, {n: m.to(torch.uint8) for n, m in masks.items()},
                 {"format": "ddpm-lottery channel masks v1 (1 = kept)"})


def load_channel_masks(path: Path, groups: list[ChannelGroup] | None = None) -> ChannelMasks:
    raw = load_tensors(path, "channel masks", "delete the level folder and re-run the command to recompute it")
    masks = {n: t.bool() for n, t in raw.items()}
    if groups is not None:
        check_channel_masks(groups, masks, str(path))
    return masks


def parameter_masks(groups: list[ChannelGroup], masks: ChannelMasks,
                    shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Bool masks of every parameter the channel masks reach (weights, biases, norm scales)."""
    out: dict[str, torch.Tensor] = {}

    def cut(name: str, dim: int, indices: torch.Tensor) -> None:
        if name not in shapes or not len(indices):
            return  # a layer without bias
        mask = out.setdefault(name, torch.ones(shapes[name], dtype=torch.bool))
        mask.index_fill_(dim, indices, False)

    for g in groups:
        removed = torch.nonzero(~masks[g.name]).view(-1)
        for r in g.reach:
            indices = r.layer_indices(removed)
            if r.role == "out":
                cut(f"{r.module}.weight", 0, indices)
                cut(f"{r.module}.bias", 0, indices)
            elif r.role == "in":
                cut(f"{r.module}.weight", 1, indices)
            else:
                cut(f"{r.module}.weight", 0, indices)
                cut(f"{r.module}.bias", 0, indices)
    return out


def norm_keeps(groups: list[ChannelGroup], masks: ChannelMasks,
               sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Each GroupNorm the groups reach: which of its channels survive."""
    keeps: dict[str, torch.Tensor] = {}
    for g in groups:
        removed = torch.nonzero(~masks[g.name]).view(-1)
        for r in g.reach:
            if r.role == "norm":
                keep = keeps.setdefault(r.module, torch.ones(sizes[r.module], dtype=torch.bool))
                keep[r.layer_indices(removed)] = False
    return keeps


def weight_masks(groups: list[ChannelGroup], masks: ChannelMasks, prunable: dict[str, tuple[int, ...]]):
    """The per-weight masks of the prunable tensors (all ones where no group reaches): what sparsity counts."""
    reached = parameter_masks(groups, masks, prunable)
    return {n: reached.get(n, torch.ones(shape, dtype=torch.bool)) for n, shape in prunable.items()}


def channel_sparsity(groups: list[ChannelGroup], masks: ChannelMasks) -> float:
    total = sum(g.channels for g in groups)
    return 1 - sum(int(masks[g.name].sum()) for g in groups) / total


def max_channel_sparsity(groups: list[ChannelGroup], settings: PruneSettings) -> float:
    total = sum(g.channels for g in groups)
    return 1 - sum(_floor_slots(g, settings) * g.sets for g in groups) / total


def _floor_slots(group: ChannelGroup, settings: PruneSettings) -> int:
    return max(1, math.ceil(settings.min_module_density * group.per_set))


# ----------------------------------------------------------------------------------------------
# Scores and one pruning round


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


def _planned(groups: list[ChannelGroup], slots: dict[str, torch.Tensor], strategy: str,
             settings: PruneSettings) -> dict[str, int]:
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
        counts[g.name] = min(removable[g.name], int(round(min(ratio, cap) * len(slots[g.name]))))
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


def prune_channels(strategy: str, groups: list[ChannelGroup], masks: ChannelMasks, weights: dict[str, torch.Tensor],
                   settings: PruneSettings, target: float | None = None) -> tuple[ChannelMasks, list[dict]]:
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
            trial = replace(settings, prune_ratio=settings.prune_ratio * scale,
                            ratio_increment=settings.ratio_increment * scale, max_round_ratio=cap)
            c = _planned(groups, slots, strategy, trial)
            return sum(c[g.name] * g.sets for g in groups), c

        ceiling = 2.0 / max(settings.prune_ratio, 1e-6)
        cap = max(settings.max_round_ratio, target)
        if removed(ceiling, cap)[0] < needed:
            cap = 1.0
        if removed(ceiling, cap)[0] < needed:
            raise UserError(f"channel sparsity {target} cannot be reached: every group keeps at least one channel "
                            f"per norm group (at most {max_channel_sparsity(groups, settings):.4f}); lower the target")
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
        applied.append({"unit": g.name, "survivors_before": survivors, "removed": k * g.sets,
                        "ratio_applied": k * g.sets / survivors if survivors else 0.0, "channels_kept": int(new[g.name].sum())})
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


# ----------------------------------------------------------------------------------------------
# From unstructured tickets: channels a weight mask has emptied, and refilling


def _dead_columns(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Which slices along ``dim`` of a weight mask hold no surviving weight."""
    other = [d for d in range(mask.dim()) if d != dim]
    return ~mask.any(dim=other) if other else ~mask


def emptied_channels(groups: list[ChannelGroup], weight_masks: dict[str, torch.Tensor],
                     norms: dict[str, tuple[int, int]]) -> ChannelMasks:
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
        reads = [r for r in g.reach if r.role == "in"] + [r for r in g.reach if g.kind == "attention"
                                                          and r.role == "out" and r.module.endswith("to_k")]
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


# ----------------------------------------------------------------------------------------------
# The masked network's group norm


def group_norm_over(x: torch.Tensor, group_of: torch.Tensor, groups: int, weight: torch.Tensor,
                    bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm where channel c belongs to group ``group_of[c]`` (groups may be uneven or empty)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    onehot = F.one_hot(group_of, groups).to(flat.dtype)  # (C, G)
    counts = (onehot.sum(0) * flat.shape[-1]).clamp(min=1)
    mean = (flat.sum(-1) @ onehot) / counts  # (N, G)
    centred = flat - (mean @ onehot.T).unsqueeze(-1)
    var = (centred.square().sum(-1) @ onehot) / counts
    scale = torch.rsqrt(var + eps) @ onehot.T  # (N, C)
    out = centred * scale.unsqueeze(-1) * weight.view(1, c, 1) + bias.view(1, c, 1)
    return out.reshape(x.shape)


def _even(group_of: torch.Tensor, groups: int) -> bool:
    """Do the surviving channels split into equal, contiguous groups (a plain GroupNorm of the same groups)?"""
    counts = torch.bincount(group_of, minlength=groups)
    return bool((counts == counts[0]).all()) and int(counts[0]) > 0


class KeptChannelGroupNorm(torch.nn.GroupNorm):
    """GroupNorm whose statistics cover the surviving channels of each group only; removed channels output zero.

    This is what the compacted network computes (a plain ``GroupNorm(G, C')`` when every group keeps
    as many channels, else :class:`UnevenGroupNorm`), so the masked ticket that trains is the small
    network that is saved.
    """

    def __init__(self, norm: torch.nn.GroupNorm, kept: torch.Tensor):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                         device=norm.weight.device, dtype=norm.weight.dtype)
        self.weight, self.bias = norm.weight, norm.bias  # the same parameters, so optimisers and EMA see them
        index = torch.nonzero(kept).view(-1)
        group_of = index // (norm.num_channels // norm.num_groups)
        self.register_buffer("kept_index", index.to(norm.weight.device), persistent=False)
        self.register_buffer("group_of", group_of.to(norm.weight.device), persistent=False)
        self.even = _even(group_of, norm.num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.kept_index
        if index.numel() == self.num_channels:
            return super().forward(x)
        kept, weight, bias = x.index_select(1, index), self.weight.index_select(0, index), self.bias.index_select(0, index)
        if self.even:
            y = F.group_norm(kept, self.num_groups, weight, bias, self.eps)
        else:
            y = group_norm_over(kept, self.group_of, self.num_groups, weight, bias, self.eps)
        return torch.zeros_like(x).index_copy(1, index, y)


class UnevenGroupNorm(torch.nn.GroupNorm):
    """A compacted GroupNorm whose groups kept different numbers of channels (``group_of`` says which)."""

    def __init__(self, num_groups: int, group_of: list[int], eps: float = 1e-5, affine: bool = True):
        super().__init__(num_groups, len(group_of), eps, affine) if len(group_of) % num_groups == 0 else \
            torch.nn.Module.__init__(self)
        if len(group_of) % num_groups:  # GroupNorm's own check would refuse: set its fields by hand
            self.num_groups, self.num_channels, self.eps, self.affine = num_groups, len(group_of), eps, affine
            self.weight = torch.nn.Parameter(torch.ones(len(group_of)))
            self.bias = torch.nn.Parameter(torch.zeros(len(group_of)))
        self.register_buffer("group_of", torch.tensor(group_of, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_over(x, self.group_of, self.num_groups, self.weight, self.bias, self.eps)


def install_kept_norms(model: torch.nn.Module, groups: list[ChannelGroup], masks: ChannelMasks) -> torch.nn.Module:
    """Swap every GroupNorm the groups reach for a :class:`KeptChannelGroupNorm` (same parameters and names)."""
    norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    for name, kept in norm_keeps(groups, masks, {n: m.num_channels for n, m in norms.items()}).items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        norm = norms[name]
        if isinstance(norm, KeptChannelGroupNorm):
            norm = _with_plain_norms(torch.nn.ModuleDict({"n": norm}))["n"]
        setattr(parent, attr, KeptChannelGroupNorm(norm, kept))
    return model


# ----------------------------------------------------------------------------------------------
# Compaction


def example_inputs(model: torch.nn.Module, batch: int = 2) -> dict[str, torch.Tensor]:
    config = model.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    first = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, config.in_channels, size, size, generator=generator).to(first.device, first.dtype)
    device = first.device
    timestep = torch.linspace(1, 999, batch).long().to(device)
    return {"sample": sample, "timestep": timestep}


def compact(model: torch.nn.Module, groups: list[ChannelGroup], masks: ChannelMasks, even: bool = True) -> torch.nn.Module:
    """A physically smaller copy of ``model`` without the removed channels (Torch-Pruning's dependency graph).

    ``model`` holds the masked weights (standard or kept-channel norms alike); it is not changed.
    ``even=False`` lets inner widths lose whole norm groups (what :func:`emptied_channels` finds).
    """
    import torch_pruning as tp

    check_channel_masks(groups, masks, "compaction", even)
    small = _with_plain_norms(copy.deepcopy(model)).eval()
    sizes = {n: m.num_channels for n, m in small.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    keeps = norm_keeps(groups, masks, sizes)
    graph = _dependency_graph(small)
    names = {module: name for name, module in small.named_modules()}
    for g in groups:
        removed = torch.nonzero(~masks[g.name]).view(-1).tolist()
        if not removed:
            continue
        layer = small.get_submodule(g.root)
        prune_fn = tp.prune_conv_out_channels if isinstance(layer, torch.nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(layer, prune_fn, idxs=removed)
        touched = {names[item.dep.target.module] for item in group if item.dep.target.module in names
                   and any(True for _ in item.dep.target.module.parameters(recurse=False))}
        stray = sorted(touched - {r.module for r in g.reach})
        if stray:
            raise UserError(f"{g.name}: removing its channels would also cut {stray[0]}, which the group does not "
                            "reach; this network's wiring is not supported by --structure channel")
        group.prune()
        if g.kind == "attention":
            _refold_attention_scale(small.get_submodule(g.name), g, int(masks[g.name].sum()))
    for name, kept in keeps.items():
        norm = small.get_submodule(name)
        group_of = torch.nonzero(kept).view(-1) // (sizes[name] // norm.num_groups)
        if not _even(group_of, norm.num_groups):
            uneven = UnevenGroupNorm(norm.num_groups, group_of.tolist(), norm.eps, norm.affine)
            uneven.weight, uneven.bias = norm.weight, norm.bias
            parent_name, _, attr = name.rpartition(".")
            setattr(small.get_submodule(parent_name) if parent_name else small, attr, uneven)
    _sync_samplers(small)
    return small


def _sync_samplers(model: torch.nn.Module) -> None:
    """diffusers' down/upsamplers check their input's channels against a stored count: keep it true."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in model.modules():
        if isinstance(module, (Downsample2D, Upsample2D)) and isinstance(getattr(module, "conv", None), torch.nn.Conv2d):
            module.channels, module.out_channels = module.conv.in_channels, module.conv.out_channels


def _refold_attention_scale(attention: torch.nn.Module, group: ChannelGroup, kept: int) -> None:
    """diffusers scales scores by 1/sqrt(head_dim) of the tensors it sees: keep the original scale."""
    factor = math.sqrt((kept / group.sets) / group.per_set)
    with torch.no_grad():
        attention.to_q.weight.mul_(factor)
        if attention.to_q.bias is not None:
            attention.to_q.bias.mul_(factor)


def norm_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Each GroupNorm of ``model``: (groups, channels)."""
    return {n: (m.num_groups, m.num_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def compaction_error(masked: torch.nn.Module, small: torch.nn.Module, batch: int = 2) -> float:
    """Largest absolute difference of the two networks' outputs on a fixed probe batch."""
    inputs = example_inputs(masked, batch)
    with torch.no_grad():
        a = masked.eval()(**inputs).sample
        b = small.eval()(**inputs).sample
    return float((a - b).abs().max())


def save_compact(spec_path: Path, weights_path: Path, small: torch.nn.Module, which: str) -> None:
    """The compacted network as safetensors plus a description of its layer shapes (no pickle)."""
    layers = {}
    for name, module in small.named_modules():
        if isinstance(module, UnevenGroupNorm):
            layers[name] = {"type": "UnevenGroupNorm", "num_groups": module.num_groups,
                            "group_of": module.group_of.tolist()}
        elif isinstance(module, torch.nn.GroupNorm):
            layers[name] = {"type": "GroupNorm", "num_groups": module.num_groups, "num_channels": module.num_channels}
        elif isinstance(module, torch.nn.Conv2d):
            layers[name] = {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels}
        elif isinstance(module, torch.nn.Linear):
            layers[name] = {"type": "Linear", "in": module.in_features, "out": module.out_features}
    network = {k: (list(v) if isinstance(v, tuple) else v) for k, v in small.config.items() if not k.startswith("_")}
    save_tensors(weights_path, small.state_dict(), {"weights": which})
    write_json(spec_path, {"format": "ddpm-lottery compact network v1", "network": network,
                                         "layers": layers, "weights": which})


def load_compact(spec_path: Path, weights_path: Path) -> torch.nn.Module:
    """Rebuild a compacted network from its description and its safetensors (needs no mask)."""
    from diffusers import UNet2DModel

    spec = read_json(spec_path, "compact network description",
                     "re-run `ddpm-lottery compact` on the level to write it")
    model = UNet2DModel.from_config(spec["network"])
    for name, layer in spec["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if layer["type"] == "UnevenGroupNorm":
            setattr(parent, attr, UnevenGroupNorm(layer["num_groups"], layer["group_of"], old.eps, old.affine))
        elif layer["type"] == "GroupNorm" and (old.num_groups, old.num_channels) != (layer["num_groups"], layer["num_channels"]):
            setattr(parent, attr, torch.nn.GroupNorm(layer["num_groups"], layer["num_channels"], old.eps, old.affine))
        elif layer["type"] == "Conv2d" and (old.in_channels, old.out_channels) != (layer["in"], layer["out"]):
            setattr(parent, attr, torch.nn.Conv2d(layer["in"], layer["out"], old.kernel_size, old.stride, old.padding,
                                                  old.dilation, old.groups, old.bias is not None))
        elif layer["type"] == "Linear" and (old.in_features, old.out_features) != (layer["in"], layer["out"]):
            setattr(parent, attr, torch.nn.Linear(layer["in"], layer["out"], old.bias is not None))
    _sync_samplers(model)
    state = load_tensors(weights_path, "compact weights", "re-run `ddpm-lottery compact` on the level")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights_path} does not match {spec_path} "
                        f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}); "
                        "re-run `ddpm-lottery compact` on the level") from None
    return model.eval()


__all__ = ["STRUCTURES", "ChannelGroup", "channel_groups", "full_channel_masks", "check_channel_masks", "simulate_channel_sparsity",
           "save_channel_masks", "load_channel_masks", "max_channel_sparsity", "example_inputs", "prune_channels", "random_channel_masks",
           "KeptChannelGroupNorm", "UnevenGroupNorm", "emptied_channels", "refill_channels", "install_kept_norms", "save_groups", "load_groups", "norm_keeps", "compact", "compaction_error", "save_compact",
           "load_compact", "parameter_masks", "weight_masks", "channel_sparsity"]


def compact_level(level) -> dict:
    """Write a level's compacted network (EMA weights) beside it and say what it removed.

    A channel ticket compacts its channel masks; any other level (an unstructured ticket, a dense
    model) loses exactly the channels its mask has emptied (:func:`emptied_channels`)."""
    from ddpm_lottery.pruning.costs import layer_flops

    level.require_finished()
    run = level.run
    masked = level.network("ema")
    groups = run.channel_groups(run.build_network())
    channels = level.channel_masks()
    if channels is not None:
        small, how = compact(masked, groups, channels), "channel ticket"
    else:
        channels = emptied_channels(groups, level.masks(), norm_shapes(masked))
        small, how = compact(masked, groups, channels, even=False), "channels the weight mask emptied"
    error = compaction_error(masked, small)
    save_compact(level.compact_spec_path, level.compact_path, small, "ema")
    if level.costs_path.exists():
        level.costs_path.unlink()  # recomputed with the compacted network's FLOPs when next asked
    removed = {g.name: int((~channels[g.name]).sum()) for g in groups if not bool(channels[g.name].all())}
    return {"level": level.index, "how": how, "removed_channels": removed,
            "channels_removed": sum(removed.values()), "channels_total": sum(g.channels for g in groups),
            "parameters": sum(p.numel() for p in masked.parameters()),
            "compact_parameters": sum(p.numel() for p in small.parameters()),
            "flops": layer_flops(masked)[0], "compact_flops": layer_flops(small)[0], "max_abs_difference": error}
