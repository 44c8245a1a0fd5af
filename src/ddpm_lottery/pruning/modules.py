"""The prunable tensors of a network and its module map.

* **Prunable tensors**: the weights of the layers the network's family prunes (every ``Conv2d`` and
  ``Linear``: attention projections and time-embedding layers included; never biases, norms or
  embeddings).  A DiT's ``--layer-groups`` and the include/exclude patterns (shell-style, on parameter
  names) narrow the set.
* **Module map**: prunable tensors grouped into the family's blocks (a U-Net's resnets and attentions,
  a DiT's transformer blocks) or single layers, in *forward-execution order* found by tracing one
  forward pass: diffusers registers ``mid_block`` after ``up_blocks`` and the time embedding runs
  before ``conv_in``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from ddpm_lottery.models.families import denoise, family_of
from ddpm_lottery.utils.errors import UserError


def prunable_names(
    model: torch.nn.Module,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> list[str]:
    """Names of the prunable weights (registration order), filtered by the layer groups and the patterns."""
    family = family_of(model)
    family.check_groups(groups)
    names = [
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if family.is_prunable(module) and (not groups or family.layer_group(module_name) in groups)
    ]
    for pattern in include:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise UserError(
                f"--include pattern {pattern!r} matches no prunable weight; "
                "`ddpm-lottery modules --granularity layer` lists their names"
            )
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise UserError(
                f"--exclude pattern {pattern!r} matches no prunable weight; "
                "`ddpm-lottery modules --granularity layer` lists their names"
            )
    if include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise UserError("the include/exclude patterns leave no weight to prune; loosen them")
    return names


def execution_order(model: torch.nn.Module) -> list[str]:
    """Names of the prunable layers in the order a forward pass first runs them."""
    family = family_of(model)
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _module, _inputs, name=name: order.append(name))
        for name, module in model.named_modules()
        if family.is_prunable(module)
    ]
    try:
        with torch.no_grad():
            denoise(model, *family.example_input(model))
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))  # first call of each layer, in order


@dataclass
class PruneModule:
    """One unit of the varying schedule: a block (or a layer) and its prunable tensors."""

    index: int
    name: str
    tensors: list[str]
    sizes: list[int]

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass
class ModuleMap:
    granularity: str
    modules: list[PruneModule]
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tensor_names(self) -> list[str]:
        return [t for m in self.modules for t in m.tensors]

    def to_json(self) -> dict:
        return {
            "granularity": self.granularity,
            "order": "forward execution (traced)",
            "modules": [
                {"index": m.index, "name": m.name, "tensors": m.tensors, "sizes": m.sizes, "size": m.size}
                for m in self.modules
            ],
            "shapes": self.shapes,
        }


def module_map(
    model: torch.nn.Module,
    granularity: str = "block",
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
) -> ModuleMap:
    """The prunable tensors grouped into the family's blocks (or single layers), in forward order."""
    if granularity not in ("block", "layer"):
        raise UserError(f"granularity must be block or layer, got {granularity!r}")
    family = family_of(model)
    prunable = set(prunable_names(model, include, exclude, groups))
    params = dict(model.named_parameters())
    groups: dict[str, list[str]] = {}
    for layer in execution_order(model):
        name = f"{layer}.weight"
        if name not in prunable:
            continue
        key = family.block_of(layer) if granularity == "block" else layer
        groups.setdefault(key, []).append(name)
    modules = [
        PruneModule(i, key, names, [params[n].numel() for n in names]) for i, (key, names) in enumerate(groups.items())
    ]
    shapes = {n: list(params[n].shape) for m in modules for n in m.tensors}
    return ModuleMap(granularity, modules, shapes)
