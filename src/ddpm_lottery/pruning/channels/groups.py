"""Channel groups: the sets of channels a channel ticket removes together, and every layer they touch.

A *channel group* is a set of channels that can be removed from a ``UNet2DModel`` without touching
the residual stream (resnet inner widths, attention dimensions, time-embedding units; see
:mod:`ddpm_lottery.pruning.channels`).  :func:`channel_groups` finds them with Torch-Pruning's
dependency graph, traced on a network with plain group norms; :func:`save_groups` stores them as
JSON, each group's channels and, per layer it reaches, the layer's index of each channel.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch_pruning as tp

from ddpm_lottery.pruning.channels.norms import _with_plain_norms
from ddpm_lottery.pruning.modules import execution_order
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import read_json, write_json

STRUCTURES = ("weight", "channel")


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
        return {
            "name": self.name,
            "kind": self.kind,
            "root": self.root,
            "channels": self.channels,
            "sets": self.sets,
            "index": self.index,
            "reach": [[r.module, r.role, [list(p) for p in r.pairs]] for r in self.reach],
        }

    @classmethod
    def from_json(cls, data: dict) -> ChannelGroup:
        reach = tuple(Reach(m, role, tuple((int(c), int(i)) for c, i in pairs)) for m, role, pairs in data["reach"])
        return cls(data["name"], data["kind"], data["root"], reach, data["channels"], data["sets"], data["index"])


SCOPES = ("all", "inner")


def channel_groups(
    model: torch.nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), scope: str = "all"
) -> list[ChannelGroup]:
    """The channel groups of a ``UNet2DModel``, in forward-execution order.

    ``scope`` "inner": ResNet inner widths, attention dimensions, time-embedding units; "all" adds the
    residual streams (block outputs, skips, samplers, conv_in) and the time embedding's output.
    The include/exclude patterns match a group's first layer's weight.
    """
    # deferred: diffusers is slow to import
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    if scope not in SCOPES:
        raise UserError(f"unknown channel scope {scope!r}; choose one of {', '.join(SCOPES)}")

    for name, module in model.named_modules():
        if isinstance(module, ResnetBlock2D) and module.time_embedding_norm != "default":
            raise UserError(
                f"{name}: --structure channel supports ResNet blocks with the default time embedding "
                "norm; use --structure weight for this network"
            )
        if isinstance(module, Attention) and (module.is_cross_attention or module.to_q.out_features % module.heads):
            raise UserError(f"{name}: --structure channel supports self-attention with equal heads only")
    plain = _with_plain_norms(copy.deepcopy(model)).eval()
    graph = _dependency_graph(plain)
    names = {module: name for name, module in plain.named_modules()}
    order = {layer: i for i, layer in enumerate(execution_order(plain))}
    found = []
    for group in graph.get_all_groups(
        ignored_layers=[plain.conv_out], root_module_types=(torch.nn.Conv2d, torch.nn.Linear)
    ):
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
            raise UserError(
                f"{group.norm or group.name}: {group.channels} channels do not split into {group.sets} "
                "equal groups; change --norm-num-groups or --block-out-channels"
            )

    def kept(group: ChannelGroup) -> bool:
        root = f"{group.root}.weight"
        if include and not any(fnmatch.fnmatchcase(root, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(root, p) for p in exclude)

    found = sorted((g for g in found if kept(g)), key=lambda g: order[g.root])
    if not found:
        raise UserError(
            "no channel group is left to prune (the include/exclude patterns match their first layers); loosen them"
        )
    return [replace(g, index=i) for i, g in enumerate(found)]


def _dependency_graph(model: torch.nn.Module):
    """Torch-Pruning's dependency graph of ``model`` (plain norms), or one line saying it could not be traced."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs(model))
    except Exception as exc:  # the tracer's failures are many and internal: name the network, not the stack
        raise UserError(
            f"Torch-Pruning could not trace this network ({type(exc).__name__}: {exc}); channel tickets "
            "need a UNet2DModel that runs on one (sample, timestep) pair"
        ) from None


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


def example_inputs(model: torch.nn.Module, batch: int = 2) -> dict[str, torch.Tensor]:
    config = model.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    first = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, config.in_channels, size, size, generator=generator).to(first.device, first.dtype)
    device = first.device
    timestep = torch.linspace(1, 999, batch).long().to(device)
    return {"sample": sample, "timestep": timestep}


def save_groups(path: Path, groups: list[ChannelGroup]) -> None:
    write_json(
        path,
        {
            "format": "ddpm-lottery channel groups v1: each group's channels and, per layer it reaches, "
            "the layer's index of each channel (out = weight rows and bias, in = weight columns, "
            "norm = GroupNorm channels)",
            "groups": [g.to_json() for g in groups],
        },
    )


def load_groups(path: Path) -> list[ChannelGroup]:
    return [ChannelGroup.from_json(g) for g in read_json(path, "channel groups")["groups"]]


__all__ = [
    "SCOPES",
    "STRUCTURES",
    "ChannelGroup",
    "Reach",
    "channel_groups",
    "example_inputs",
    "load_groups",
    "save_groups",
]
