"""Compaction: the physically smaller network a channel ticket (or an emptied weight ticket) is.

``model`` holds the masked weights; :func:`compact` removes the masked channels with Torch-Pruning's
dependency graph, so that the smaller network computes exactly what the masked one does
(:func:`compaction_error` measures it).  Attention scores use ``1/sqrt(head_dim)``; diffusers takes
it from the tensor, so compaction folds ``sqrt(d'/d)`` into ``to_q``.  The compacted network is
stored as safetensors plus a JSON description of its layer shapes (:func:`save_compact`, no pickle).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch_pruning as tp

from ddpm_lottery.pruning.channels.groups import ChannelGroup, _dependency_graph, example_inputs
from ddpm_lottery.pruning.channels.masks import ChannelMasks, check_channel_masks, norm_keeps
from ddpm_lottery.pruning.channels.norms import UnevenGroupNorm, _even, _with_plain_norms
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, read_json, save_tensors, write_json


def compact(
    model: torch.nn.Module, groups: list[ChannelGroup], masks: ChannelMasks, even: bool = True
) -> torch.nn.Module:
    """A physically smaller copy of ``model`` without the removed channels (Torch-Pruning's dependency graph).

    ``model`` holds the masked weights (standard or kept-channel norms alike); it is not changed.
    ``even=False`` lets inner widths lose whole norm groups (what :func:`emptied_channels` finds).
    """
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
        touched = {
            names[item.dep.target.module]
            for item in group
            if item.dep.target.module in names and any(True for _ in item.dep.target.module.parameters(recurse=False))
        }
        stray = sorted(touched - {r.module for r in g.reach})
        if stray:
            raise UserError(
                f"{g.name}: removing its channels would also cut {stray[0]}, which the group does not "
                "reach; this network's wiring is not supported by --structure channel"
            )
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
    # deferred: diffusers is slow to import
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.upsampling import Upsample2D

    for module in model.modules():
        if isinstance(module, (Downsample2D, Upsample2D)) and isinstance(
            getattr(module, "conv", None), torch.nn.Conv2d
        ):
            module.channels, module.out_channels = module.conv.in_channels, module.conv.out_channels


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


def save_compact(spec_path: Path, weights_path: Path, small: torch.nn.Module, which: str) -> None:
    """The compacted network as safetensors plus a description of its layer shapes (no pickle)."""
    layers = {}
    for name, module in small.named_modules():
        if isinstance(module, UnevenGroupNorm):
            layers[name] = {
                "type": "UnevenGroupNorm",
                "num_groups": module.num_groups,
                "group_of": module.group_of.tolist(),
            }
        elif isinstance(module, torch.nn.GroupNorm):
            layers[name] = {"type": "GroupNorm", "num_groups": module.num_groups, "num_channels": module.num_channels}
        elif isinstance(module, torch.nn.Conv2d):
            layers[name] = {"type": "Conv2d", "in": module.in_channels, "out": module.out_channels}
        elif isinstance(module, torch.nn.Linear):
            layers[name] = {"type": "Linear", "in": module.in_features, "out": module.out_features}
    network = {k: (list(v) if isinstance(v, tuple) else v) for k, v in small.config.items() if not k.startswith("_")}
    save_tensors(weights_path, small.state_dict(), {"weights": which})
    write_json(
        spec_path, {"format": "ddpm-lottery compact network v1", "network": network, "layers": layers, "weights": which}
    )


def load_compact(spec_path: Path, weights_path: Path) -> torch.nn.Module:
    """Rebuild a compacted network from its description and its safetensors (needs no mask)."""
    from diffusers import UNet2DModel  # deferred: diffusers is slow to import

    spec = read_json(spec_path, "compact network description", "re-run `ddpm-lottery compact` on the level to write it")
    model = UNet2DModel.from_config(spec["network"])
    for name, layer in spec["layers"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if layer["type"] == "UnevenGroupNorm":
            setattr(parent, attr, UnevenGroupNorm(layer["num_groups"], layer["group_of"], old.eps, old.affine))
        elif layer["type"] == "GroupNorm" and (old.num_groups, old.num_channels) != (
            layer["num_groups"],
            layer["num_channels"],
        ):
            setattr(parent, attr, torch.nn.GroupNorm(layer["num_groups"], layer["num_channels"], old.eps, old.affine))
        elif layer["type"] == "Conv2d" and (old.in_channels, old.out_channels) != (layer["in"], layer["out"]):
            setattr(
                parent,
                attr,
                torch.nn.Conv2d(
                    layer["in"],
                    layer["out"],
                    old.kernel_size,
                    old.stride,
                    old.padding,
                    old.dilation,
                    old.groups,
                    old.bias is not None,
                ),
            )
        elif layer["type"] == "Linear" and (old.in_features, old.out_features) != (layer["in"], layer["out"]):
            setattr(parent, attr, torch.nn.Linear(layer["in"], layer["out"], old.bias is not None))
    _sync_samplers(model)
    state = load_tensors(weights_path, "compact weights", "re-run `ddpm-lottery compact` on the level")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"{weights_path} does not match {spec_path} "
            f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}); "
            "re-run `ddpm-lottery compact` on the level"
        ) from None
    return model.eval()


__all__ = ["compact", "compaction_error", "load_compact", "save_compact"]
