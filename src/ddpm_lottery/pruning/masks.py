"""Masks: one boolean tensor per prunable weight (True = the weight survives), counted and stored.

Masks are boolean tensors; on disk they are bit-packed (1 bit per weight) in safetensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors_and_metadata, save_tensors

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of the parameter's shape


def full_masks(model: torch.nn.Module, names: list[str]) -> Masks:
    """Every weight of the named parameters kept (a dense level's masks)."""
    params = dict(model.named_parameters())
    return masks_of_shapes({n: params[n].shape for n in names})


def masks_of_shapes(shapes: dict[str, tuple[int, ...]]) -> Masks:
    """Every weight kept, for tensors known by their shapes only (a module map's)."""
    return {n: torch.ones(tuple(shape), dtype=torch.bool) for n, shape in shapes.items()}


def count_kept(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def count_total(masks: Masks) -> int:
    return int(sum(m.numel() for m in masks.values()))


def sparsity(masks: Masks) -> float:
    total = count_total(masks)
    return 1.0 - count_kept(masks) / total if total else 0.0


def save_masks(path: str | Path, masks: Masks) -> None:
    """Bit-packed: one uint8 tensor per mask plus its shape in the metadata."""
    packed = {n: torch.from_numpy(np.packbits(m.cpu().numpy().reshape(-1).astype(np.uint8))) for n, m in masks.items()}
    metadata = {
        "format": "ddpm-lottery bit-packed masks v1 (numpy.packbits, big bit order)",
        **{f"shape:{n}": ",".join(map(str, m.shape)) for n, m in masks.items()},
    }
    save_tensors(path, packed, metadata)


def load_masks(
    path: str | Path,
    expected_shapes: dict[str, list[int]] | None = None,
    fix: str = "re-run the command that writes it",
) -> Masks:
    path = Path(path)
    packed, metadata = load_tensors_and_metadata(path, "mask file", fix)
    masks: Masks = {}
    for name, bits in packed.items():
        shape_text = metadata.get(f"shape:{name}")
        if shape_text is None:
            raise UserError(f"mask file {path} has no shape for {name}; it was not written by ddpm-lottery; {fix}")
        shape = [int(s) for s in shape_text.split(",") if s]
        count = math.prod(shape)
        flat = np.unpackbits(bits.numpy())[:count].astype(bool)
        masks[name] = torch.from_numpy(flat.reshape(shape).copy())
    if expected_shapes is not None and (
        set(masks) != set(expected_shapes) or any(list(masks[n].shape) != list(s) for n, s in expected_shapes.items())
    ):
        raise UserError(
            f"mask file {path} does not match the network (different tensors or shapes); "
            "use a mask from a run of the same preset and patterns"
        )
    return masks
