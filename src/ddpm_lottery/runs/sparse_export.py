"""A level's sparse export: its mask bits and surviving values, a fraction of the dense file's size.

``sparse.safetensors`` beside a level holds, per prunable tensor, ``mask.<name>`` (numpy.packbits of the
flattened mask) and ``values.<name>`` (the surviving values in row-major order), with the shape in the
file's metadata; every other tensor is stored dense as ``dense.<name>``.  A committed study keeps its
pruned levels in this form only; :func:`load_sparse` rebuilds the dense state dict exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors_and_metadata, save_tensors

Masks = dict[str, torch.Tensor]


def export_sparse(weights: dict[str, torch.Tensor], masks: Masks, path: str | Path) -> int:
    """Write mask bits + surviving values (+ dense other tensors); returns the file's size in bytes."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {
        "format": "ddpm-lottery sparse export v1: mask.<name> = numpy.packbits of the flattened mask, "
        "values.<name> = surviving values in row-major order, dense.<name> = other tensors"
    }
    for name, value in weights.items():
        if name in masks:
            mask = masks[name].reshape(-1)
            tensors[f"mask.{name}"] = torch.from_numpy(np.packbits(mask.numpy().astype(np.uint8)))
            tensors[f"values.{name}"] = value.reshape(-1)[mask].contiguous()
            metadata[f"shape:{name}"] = ",".join(map(str, value.shape))
        else:
            tensors[f"dense.{name}"] = value
    save_tensors(path, tensors, metadata)
    return Path(path).stat().st_size


def load_sparse(path: str | Path, fix: str = "re-export it") -> dict[str, torch.Tensor]:
    """Rebuild the dense state dict from a sparse export."""
    tensors, metadata = load_tensors_and_metadata(path, "sparse export", fix)
    state = {k[len("dense.") :]: v for k, v in tensors.items() if k.startswith("dense.")}
    for key, values in tensors.items():
        if not key.startswith("values."):
            continue
        name = key[len("values.") :]
        if f"shape:{name}" not in metadata or f"mask.{name}" not in tensors:
            raise UserError(f"sparse export {path} lacks the shape or mask of {name}; re-export it")
        shape = [int(s) for s in metadata[f"shape:{name}"].split(",")]
        count = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors[f"mask.{name}"].numpy())[:count].astype(bool))
        if int(mask.sum()) != values.numel():
            raise UserError(f"sparse export {path} is inconsistent for {name}; re-export it")
        dense = torch.zeros(count, dtype=values.dtype)
        dense[mask] = values
        state[name] = dense.view(shape)
    return state
