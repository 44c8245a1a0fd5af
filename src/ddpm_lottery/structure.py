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

from .errors import UserError
from .files import load_tensors, read_json, save_tensors, write_json
from .pruning import PruneSettings, execution_order

STRUCTURES = ("weight", "channel")
ChannelMasks = dict[str, torch.Tensor]  # channel group name -> bool (channels,)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removable together with every layer they touch."""

    name: str  # the owning module, e.g. "down_blocks.0.resnets.0"
    kind: str  # resnet | attention | time
    root: str  # the layer whose output channels these are (Torch-Pruning's pruning root)
    producers: tuple[str, ...]  # layers whose output rows (weight and bias) are these channels
    consumers: tuple[str, ...]  # layers whose input columns are these channels
    norm: str | None  # the GroupNorm over these channels
    channels: int
    sets: int  # norm groups (resnet) or heads (attention): every set keeps the same number of channels
    index: int = 0  # forward-execution order among the groups: j of the varying schedule

    @property
    def per_set(self) -> int:
        return self.channels // self.sets

    def weight_rows(self) -> list[str]:
        return [f"{p}.weight" for p in self.producers]

    def params(self) -> dict[str, int]:
        """Every parameter the group's mask reaches, with the dimension that indexes the channels."""
        out = {f"{p}.weight": 0 for p in self.producers} | {f"{p}.bias": 0 for p in self.producers}
        out |= {f"{c}.weight": 1 for c in self.consumers}
        if self.norm:
            out |= {f"{self.norm}.weight": 0, f"{self.norm}.bias": 0}
        return out


def channel_groups(model: torch.nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[ChannelGroup]:
    """The channel groups of a ``UNet2DModel``, in forward-execution order (the patterns match root weights)."""
    import fnmatch

    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import TimestepEmbedding
    from diffusers.models.resnet import ResnetBlock2D

    found = []
    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock2D):
            if module.time_embedding_norm != "default" or module.use_in_shortcut is None:
                raise UserError(f"{name}: --structure channel supports ResNet blocks with the default time "
                                "embedding norm; use --structure weight for this network")
            producers = ("conv1",) + (("time_emb_proj",) if module.time_emb_proj is not None else ())
            found.append(ChannelGroup(name, "resnet", f"{name}.conv1", tuple(f"{name}.{p}" for p in producers),
                                      (f"{name}.conv2",), f"{name}.norm2", module.conv1.out_channels,
                                      module.norm2.num_groups))
        elif isinstance(module, Attention):
            if module.is_cross_attention or module.to_q.out_features % module.heads:
                raise UserError(f"{name}: --structure channel supports self-attention with equal heads only")
            found.append(ChannelGroup(name, "attention", f"{name}.to_q",
                                      tuple(f"{name}.{p}" for p in ("to_q", "to_k", "to_v")), (f"{name}.to_out.0",),
                                      None, module.to_q.out_features, module.heads))
        elif isinstance(module, TimestepEmbedding):
            if module.cond_proj is not None or module.post_act is not None:
                raise UserError(f"{name}: --structure channel supports the plain two-layer time embedding only")
            found.append(ChannelGroup(name, "time", f"{name}.linear_1", (f"{name}.linear_1",),
                                      (f"{name}.linear_2",), None, module.linear_1.out_features, 1))
    for group in found:
        if group.channels % group.sets:
            raise UserError(f"{group.norm or group.name}: {group.channels} channels do not split into {group.sets} "
                            "equal groups; change --norm-num-groups or --block-out-channels")

    def kept(group: ChannelGroup) -> bool:
        root = f"{group.root}.weight"
        if include and not any(fnmatch.fnmatchcase(root, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(root, p) for p in exclude)

    order = {layer: i for i, layer in enumerate(execution_order(model))}
    found = sorted((g for g in found if kept(g)), key=lambda g: order[g.root])
    if not found:
        raise UserError("no channel group is left to prune (the include/exclude patterns match their first "
                        "layers: conv1, to_q, linear_1); loosen them")
    return [replace(g, index=i) for i, g in enumerate(found)]


# ----------------------------------------------------------------------------------------------
# Channel masks and what they mean for weights


def full_channel_masks(groups: list[ChannelGroup]) -> ChannelMasks:
    return {g.name: torch.ones(g.channels, dtype=torch.bool) for g in groups}


def check_channel_masks(groups: list[ChannelGroup], masks: ChannelMasks, where: str) -> None:
    """Every group present, of its size, with the same number of survivors in every set."""
    for g in groups:
        mask = masks.get(g.name)
        if mask is None or mask.shape != (g.channels,):
            raise UserError(f"{where}: channel mask of {g.name} is missing or not {g.channels} long; it belongs to "
                            "another network")
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
    for g in groups:
        for name, dim in g.params().items():
            if name not in shapes:
                continue  # a layer without bias
            mask = out.get(name, torch.ones(shapes[name], dtype=torch.bool))
            view = [1] * len(shapes[name])
            view[dim] = g.channels
            out[name] = mask & masks[g.name].view(view)
    return out


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
    """Mean |w| of each channel's rows over the group's producers."""
    total = torch.zeros(group.channels)
    count = 0
    for name in group.weight_rows():
        w = weights[name].detach().float().cpu().abs().reshape(group.channels, -1)
        total += w.sum(1)
        count += w.shape[1]
    return total / count


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
# The masked network's group norm


class KeptChannelGroupNorm(torch.nn.GroupNorm):
    """GroupNorm whose statistics cover the surviving channels only; removed channels output zero.

    With the same number of survivors in every group this is exactly ``GroupNorm(G, C')`` of the
    compacted network, so the masked ticket that trains is the small network that is saved.
    """

    def __init__(self, norm: torch.nn.GroupNorm, kept: torch.Tensor):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine,
                         device=norm.weight.device, dtype=norm.weight.dtype)
        self.weight, self.bias = norm.weight, norm.bias  # the same parameters, so optimisers and EMA see them
        self.register_buffer("kept_index", torch.nonzero(kept).view(-1).to(norm.weight.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.kept_index
        if index.numel() == self.num_channels:
            return super().forward(x)
        y = F.group_norm(x.index_select(1, index), self.num_groups, self.weight.index_select(0, index),
                         self.bias.index_select(0, index), self.eps)
        return torch.zeros_like(x).index_copy(1, index, y)


def install_kept_norms(model: torch.nn.Module, groups: list[ChannelGroup], masks: ChannelMasks) -> torch.nn.Module:
    """Swap each group's norm for a :class:`KeptChannelGroupNorm` (parameters are shared, names unchanged)."""
    for g in groups:
        if not g.norm:
            continue
        parent_name, _, attr = g.norm.rpartition(".")
        parent = model.get_submodule(parent_name)
        norm = getattr(parent, attr)
        if isinstance(norm, KeptChannelGroupNorm):
            norm = torch.nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
            norm.weight, norm.bias = getattr(parent, attr).weight, getattr(parent, attr).bias
        setattr(parent, attr, KeptChannelGroupNorm(norm, masks[g.name]))
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


def compact(model: torch.nn.Module, groups: list[ChannelGroup], masks: ChannelMasks) -> torch.nn.Module:
    """A physically smaller copy of ``model`` without the removed channels (Torch-Pruning's dependency graph).

    ``model`` holds the masked weights (standard or kept-channel norms alike); it is not changed.
    """
    import torch_pruning as tp

    check_channel_masks(groups, masks, "compaction")
    small = copy.deepcopy(model).eval()
    for g in groups:  # plain GroupNorms for the tracer; the compacted ones are plain GroupNorm(G, C')
        if g.norm and isinstance(small.get_submodule(g.norm), KeptChannelGroupNorm):
            parent_name, _, attr = g.norm.rpartition(".")
            old = small.get_submodule(g.norm)
            plain = torch.nn.GroupNorm(old.num_groups, old.num_channels, old.eps, old.affine)
            plain.weight, plain.bias = old.weight, old.bias
            setattr(small.get_submodule(parent_name), attr, plain)
    try:
        graph = tp.DependencyGraph().build_dependency(small, example_inputs=example_inputs(small))
    except Exception as exc:  # the tracer's failures are many and internal: name the network, not the stack
        raise UserError(f"Torch-Pruning could not trace this network ({type(exc).__name__}: {exc}); compact "
                        "tickets need a UNet2DModel that runs on one (sample, timestep) pair") from None
    for g in groups:
        removed = torch.nonzero(~masks[g.name]).view(-1).tolist()
        if not removed:
            continue
        layer = small.get_submodule(g.root)
        prune_fn = tp.prune_conv_out_channels if isinstance(layer, torch.nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(layer, prune_fn, idxs=removed)
        touched = {dep.target.name.split(" ")[0] for dep, _ in group}
        expected = set(g.producers) | set(g.consumers) | ({g.norm} if g.norm else set())
        stray = sorted(n for n in touched if "(" not in n and n not in expected and not n.startswith("_"))
        if stray:
            raise UserError(f"{g.name}: removing its channels would also cut {stray[0]}, which is not part of the "
                            "group; this network's wiring is not supported by --structure channel")
        group.prune()
        if g.kind == "attention":
            _refold_attention_scale(small.get_submodule(g.name), g, int(masks[g.name].sum()))
    return small


def _refold_attention_scale(attention: torch.nn.Module, group: ChannelGroup, kept: int) -> None:
    """diffusers scales scores by 1/sqrt(head_dim) of the tensors it sees: keep the original scale."""
    factor = math.sqrt((kept / group.sets) / group.per_set)
    with torch.no_grad():
        attention.to_q.weight.mul_(factor)
        if attention.to_q.bias is not None:
            attention.to_q.bias.mul_(factor)


def compaction_error(masked: torch.nn.Module, small: torch.nn.Module, batch: int = 2) -> float:
    """Largest absolute difference of the two networks' outputs on a fixed probe batch."""
    inputs = example_inputs(masked, batch)
    with torch.no_grad():
        a = masked.eval()(**inputs).sample
        b = small.eval()(**inputs).sample
    return float((a - b).abs().max())


def save_compact(folder: Path, small: torch.nn.Module, which: str, weights_name: str) -> None:
    """The compacted network as safetensors plus a description of its layer shapes (no pickle)."""
    layers = {}
    for name, module in small.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            layers[name] = {"type": "GroupNorm", "num_groups": module.num_groups, "num_channels": module.num_channels}
        elif isinstance(module, torch.nn.Conv2d):
            layers[name] = {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels}
        elif isinstance(module, torch.nn.Linear):
            layers[name] = {"type": "Linear", "in": module.in_features, "out": module.out_features}
    network = {k: (list(v) if isinstance(v, tuple) else v) for k, v in small.config.items() if not k.startswith("_")}
    save_tensors(folder / weights_name, small.state_dict(), {"weights": which})
    write_json(folder / "compact.json", {"format": "ddpm-lottery compact network v1", "network": network,
                                         "layers": layers, "weights": which})


def load_compact(folder: Path, weights_name: str) -> torch.nn.Module:
    """Rebuild a compacted network from ``compact.json`` and its safetensors (needs no mask)."""
    from diffusers import UNet2DModel

    spec = read_json(folder / "compact.json", "compact network description",
                     "re-run `ddpm-lottery compact` on the level to write it")
    model = UNet2DModel.from_config(spec["network"])
    for name, layer in spec["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if layer["type"] == "GroupNorm" and (old.num_groups, old.num_channels) != (layer["num_groups"], layer["num_channels"]):
            setattr(parent, attr, torch.nn.GroupNorm(layer["num_groups"], layer["num_channels"], old.eps, old.affine))
        elif layer["type"] == "Conv2d" and (old.in_channels, old.out_channels) != (layer["in"], layer["out"]):
            setattr(parent, attr, torch.nn.Conv2d(layer["in"], layer["out"], old.kernel_size, old.stride, old.padding,
                                                  old.dilation, old.groups, old.bias is not None))
        elif layer["type"] == "Linear" and (old.in_features, old.out_features) != (layer["in"], layer["out"]):
            setattr(parent, attr, torch.nn.Linear(layer["in"], layer["out"], old.bias is not None))
    state = load_tensors(folder / weights_name, "compact weights", "re-run `ddpm-lottery compact` on the level")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{folder / weights_name} does not match {folder / 'compact.json'} "
                        f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}); "
                        "re-run `ddpm-lottery compact` on the level") from None
    return model.eval()


__all__ = ["STRUCTURES", "ChannelGroup", "channel_groups", "full_channel_masks", "check_channel_masks", "simulate_channel_sparsity",
           "save_channel_masks", "load_channel_masks", "max_channel_sparsity", "example_inputs", "prune_channels", "random_channel_masks",
           "KeptChannelGroupNorm", "install_kept_norms", "compact", "compaction_error", "save_compact",
           "load_compact", "parameter_masks", "weight_masks", "channel_sparsity"]
