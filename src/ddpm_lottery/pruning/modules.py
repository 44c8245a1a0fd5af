"""The prunable tensors of a network and its module map.

* **Prunable tensors**: the weights of every ``Conv2d`` and ``Linear`` (attention projections and
  time-embedding layers included); never biases, norms or embeddings.  Include/exclude patterns
  (shell-style, on parameter names) narrow the set.
* **Module map**: prunable tensors grouped into conventional U-Net blocks (or single layers), in
  *forward-execution order* found by tracing one forward pass: diffusers registers ``mid_block``
  after ``up_blocks`` and the time embedding runs before ``conv_in``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import torch

from ddpm_lottery.models.conditioning import denoise
from ddpm_lottery.utils.errors import UserError

_BLOCK_PATTERN = re.compile(
    r"^((?:down_blocks|up_blocks)\.\d+\.(?:resnets|attentions|downsamplers|upsamplers)\.\d+"
    r"|mid_block\.(?:resnets|attentions)\.\d+)"
)


def prunable_names(model: torch.nn.Module, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """Names of the prunable weights (registration order), filtered by the patterns."""
    names = [
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
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
    """Names of the Conv2d/Linear layers in the order a forward pass first runs them."""
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _module, _inputs, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    config = model.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            denoise(
                model,
                torch.zeros(1, config.in_channels, size, size, device=device),
                torch.zeros(1, dtype=torch.long, device=device),
            )
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))  # first call of each layer, in order


def block_of(layer_name: str) -> str:
    """The conventional U-Net block a layer belongs to (``down_blocks.1.resnets.0``, ``conv_in``...)."""
    match = _BLOCK_PATTERN.match(layer_name)
    return match.group(1) if match else layer_name.split(".")[0]


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
    model: torch.nn.Module, granularity: str = "block", include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> ModuleMap:
    if granularity not in ("block", "layer"):
        raise UserError(f"granularity must be block or layer, got {granularity!r}")
    prunable = set(prunable_names(model, include, exclude))
    params = dict(model.named_parameters())
    groups: dict[str, list[str]] = {}
    for layer in execution_order(model):
        name = f"{layer}.weight"
        if name not in prunable:
            continue
        key = block_of(layer) if granularity == "block" else layer
        groups.setdefault(key, []).append(name)
    modules = [
        PruneModule(i, key, names, [params[n].numel() for n in names]) for i, (key, names) in enumerate(groups.items())
    ]
    shapes = {n: list(params[n].shape) for m in modules for n in m.tensors}
    return ModuleMap(granularity, modules, shapes)
