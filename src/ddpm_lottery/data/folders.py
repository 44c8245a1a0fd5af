"""Image folders: PNG/JPEG files, flat or in class subfolders.

``imagefolder``
    PNG/JPEG files, flat (no labels) or in class subfolders (labels = index of the sorted
    subfolder names that hold images).  Images are center-cropped to a square and resized
    (bicubic) to ``image_size``.  The folder is the split: ``split`` is not used.  A file whose
    header claims more pixels than Pillow's decompression-bomb limit is refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.utils.errors import UserError

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, filenames in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory) / f for f in filenames)
    return sorted((p for p in found if _is_image(p)), key=lambda p: p.relative_to(folder).as_posix())


def _load_imagefolder(root, image_size: int | None, channels: int | None) -> ImageSet:
    if root is None:
        raise UserError("imagefolder needs a folder of PNG/JPEG images: pass --data-dir")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; pass --data-dir with a folder of PNG/JPEG images")
    flat = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
    class_dirs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    per_class = [(d.name, _images_under(d)) for d in class_dirs]
    per_class = [(c, files) for c, files in per_class if files]
    if flat and per_class:
        raise UserError(
            f"{folder} holds images both at its top level and in subfolders ({per_class[0][0]}/ ...); "
            f"put all images in class subfolders, or all at the top level"
        )
    if not flat and not per_class:
        raise UserError(
            f"no PNG or JPEG images in {folder} (looked for .png/.jpg/.jpeg, flat or in class "
            f"subfolders); point --data-dir at a folder of images"
        )
    if flat:
        paths, label_list, classes = flat, None, None
    else:
        paths = [p for _, files in per_class for p in files]
        label_list = [i for i, (_, files) in enumerate(per_class) for _ in files]
        classes = tuple(c for c, _ in per_class)

    def unreadable(path, exc):
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            return UserError(
                f"image {path} is too large: its header claims more than {Image.MAX_IMAGE_PIXELS:,} "
                f"pixels, so it is not a training image of the kind expected (or is a decompression "
                f"bomb); remove the file or scale it down"
            )
        return UserError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file")

    unreadable_errors = (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    )

    # Pass 1: headers only (cheap): modes for the default channel count, sizes when image_size is None.
    modes, sizes = [], []
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; such a file would still be decoded in
        # full (gigabytes) to become one small training image, so it is refused like a larger one.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for path in paths:
            try:
                with Image.open(path) as im:
                    modes.append(im.mode)
                    sizes.append(im.size)
            except unreadable_errors as exc:
                raise unreadable(path, exc) from None
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES for m in modes) else 3
    if image_size is None:
        first = sizes[0]
        for path, size in zip(paths, sizes):
            if size != first:
                raise UserError(
                    f"images in {folder} differ in size ({paths[0].name} is {first[0]}×{first[1]}, "
                    f"{path.name} is {size[0]}×{size[1]}); pass --image-size to resize them all"
                )
        image_size = min(first)
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.load()
                im = im.convert(mode)
        except unreadable_errors as exc:
            raise unreadable(path, exc) from None
        width, height = im.size
        side = min(width, height)
        if (width, height) != (side, side):
            left, top = (width - side) // 2, (height - side) // 2
            im = im.crop((left, top, left + side, top + side))
        if side != image_size:
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        array = np.asarray(im, dtype=np.uint8)
        out[i] = array.reshape(image_size, image_size, channels)
    images = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
    labels = torch.tensor(label_list, dtype=torch.int64) if label_list is not None else None
    return ImageSet(images=images, labels=labels, name="imagefolder", source=str(folder), flip=False, classes=classes)
