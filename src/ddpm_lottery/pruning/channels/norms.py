"""Group norms over the channels a channel ticket keeps, in the masked and in the compacted network.

``norm2`` normalises each of its groups over the channels that survive (:class:`KeptChannelGroupNorm`,
used while a channel ticket trains and whenever it is evaluated), and every group loses the same
number of channels, so the compacted ``GroupNorm(G, C')`` has the same groups.  A compaction whose
groups kept different numbers of channels uses :class:`UnevenGroupNorm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_norm_over(
    x: torch.Tensor, group_of: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
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
        super().__init__(
            norm.num_groups,
            norm.num_channels,
            norm.eps,
            norm.affine,
            device=norm.weight.device,
            dtype=norm.weight.dtype,
        )
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
        kept, weight, bias = (
            x.index_select(1, index),
            self.weight.index_select(0, index),
            self.bias.index_select(0, index),
        )
        if self.even:
            y = F.group_norm(kept, self.num_groups, weight, bias, self.eps)
        else:
            y = group_norm_over(kept, self.group_of, self.num_groups, weight, bias, self.eps)
        return torch.zeros_like(x).index_copy(1, index, y)


class UnevenGroupNorm(torch.nn.GroupNorm):
    """A compacted GroupNorm whose groups kept different numbers of channels (``group_of`` says which)."""

    def __init__(self, num_groups: int, group_of: list[int], eps: float = 1e-5, affine: bool = True):
        super().__init__(num_groups, len(group_of), eps, affine) if len(
            group_of
        ) % num_groups == 0 else torch.nn.Module.__init__(self)
        if len(group_of) % num_groups:  # GroupNorm's own check would refuse: set its fields by hand
            self.num_groups, self.num_channels, self.eps, self.affine = num_groups, len(group_of), eps, affine
            self.weight = torch.nn.Parameter(torch.ones(len(group_of)))
            self.bias = torch.nn.Parameter(torch.zeros(len(group_of)))
        self.register_buffer("group_of", torch.tensor(group_of, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_over(x, self.group_of, self.num_groups, self.weight, self.bias, self.eps)


def _with_plain_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Kept-channel norms swapped back for plain GroupNorms (same parameters), as the tracer expects."""
    for name, module in list(model.named_modules()):
        if isinstance(module, KeptChannelGroupNorm):
            parent_name, _, attr = name.rpartition(".")
            plain = torch.nn.GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine)
            plain.weight, plain.bias = module.weight, module.bias
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, plain)
    return model


def norm_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Each GroupNorm of ``model``: (groups, channels)."""
    return {n: (m.num_groups, m.num_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}


__all__ = ["KeptChannelGroupNorm", "UnevenGroupNorm", "group_norm_over", "norm_shapes"]
