"""Channel masks (one bool per channel of each group) and what they mean for weights and norms.

A channel mask keeps, in every norm group (or attention head) of its channel group, the same
number of channels (:func:`check_channel_masks`).  :func:`parameter_masks` and :func:`weight_masks`
turn it into per-weight masks of the layers the groups reach; :func:`install_kept_norms` gives the
masked network the group norms over the surviving channels it trains and is evaluated with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_lottery.pruning.channels.groups import ChannelGroup
from ddpm_lottery.pruning.channels.norms import KeptChannelGroupNorm, _with_plain_norms
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, save_tensors

ChannelMasks = dict[str, torch.Tensor]  # channel group name -> bool (channels,)


def full_channel_masks(groups: list[ChannelGroup]) -> ChannelMasks:
    return {g.name: torch.ones(g.channels, dtype=torch.bool) for g in groups}


def check_channel_masks(groups: list[ChannelGroup], masks: ChannelMasks, where: str, even: bool = True) -> None:
    """Every group present, of its size, with survivors; with ``even``, the same number in every set."""
    for g in groups:
        mask = masks.get(g.name)
        if mask is None or mask.shape != (g.channels,):
            raise UserError(
                f"{where}: channel mask of {g.name} is missing or not {g.channels} long; it belongs to another network"
            )
        if not even:
            if not bool(mask.any()):
                raise UserError(f"{where}: {g.name} keeps no channel; every channel group keeps at least one")
            continue
        counts = mask.view(g.sets, g.per_set).sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise UserError(
                f"{where}: {g.norm or g.name} keeps {counts.tolist()} channels per group; a channel ticket "
                f"keeps the same number (at least one) in each of its {g.sets} groups"
            )


def save_channel_masks(path: Path, masks: ChannelMasks) -> None:
    save_tensors(
        path, {n: m.to(torch.uint8) for n, m in masks.items()}, {"format": "ddpm-lottery channel masks v1 (1 = kept)"}
    )


def load_channel_masks(path: Path, groups: list[ChannelGroup] | None = None) -> ChannelMasks:
    raw = load_tensors(path, "channel masks", "delete the level folder and re-run the command to recompute it")
    masks = {n: t.bool() for n, t in raw.items()}
    if groups is not None:
        check_channel_masks(groups, masks, str(path))
    return masks


def parameter_masks(
    groups: list[ChannelGroup], masks: ChannelMasks, shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
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


def norm_keeps(groups: list[ChannelGroup], masks: ChannelMasks, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
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


__all__ = [
    "ChannelMasks",
    "channel_sparsity",
    "check_channel_masks",
    "full_channel_masks",
    "install_kept_norms",
    "load_channel_masks",
    "norm_keeps",
    "parameter_masks",
    "save_channel_masks",
    "weight_masks",
]
