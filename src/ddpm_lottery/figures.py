"""Figures written as PNG: sample grids (PIL) and plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .runs import atomic_path


def grid_array(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) array with a gray border."""
    count, channels, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
                     128, dtype=np.uint8)
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        canvas[top:top + height, left:left + width] = array[index]
    return canvas


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of uint8 images, upscaled ``scale``x with nearest neighbour for legibility."""
    canvas = grid_array(images, columns)
    mode = "L" if canvas.shape[-1] == 1 else "RGB"
    picture = Image.fromarray(canvas[..., 0] if mode == "L" else canvas, mode=mode)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
