"""Images as loaded (uint8 tensors), fitted to the network, in the model's range, and fingerprinted.

Every loader returns an :class:`ImageSet` whose ``images`` are ``uint8`` of shape
``(N, C, H, W)`` with ``C`` in {1, 3}.  :func:`~ddpm_lottery.data.loaders.load_dataset` then fits
them to the network with :func:`prepare_images`:

* channels: 1 -> 3 repeats the gray channel; 3 -> 1 is ITU-R BT.601 luma
  (``0.299 R + 0.587 G + 0.114 B``, rounded);
* size: images smaller than the network's side are **zero-padded symmetrically**
  (0 is black, the background of MNIST-like digits, so a 28x28 digit padded to 32x32 is the
  same digit with a wider margin); larger images, or an odd difference, are an error
  unless resizing was asked for (image folders resize themselves when they are loaded).

:func:`data_fingerprint` summarises the loaded images (count, shape, SHA-256 of the pixels as
fed to the network) so that a run's identity follows its data, not only its settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_lottery.utils.errors import UserError

DATASETS: tuple[str, ...] = ("embedded", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")

#: The classes of the datasets whose class count is fixed (an image folder has as many as class subfolders).
DATASET_CLASSES: dict[str, int] = {"embedded": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
    "folder": "imagefolder",
}


@dataclass
class ImageSet:
    """Images of one dataset split, as loaded (before any training augmentation)."""

    images: torch.Tensor  # uint8, (N, C, H, W), C in {1, 3}
    labels: torch.Tensor | None  # int64 (N,) or None
    name: str  # dataset name, one of DATASETS
    source: str  # where the images came from (path, package file)
    flip: bool  # random horizontal flip is the right augmentation (CIFAR only)
    classes: tuple[str, ...] | None = None  # class names when known (image folders)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def prepare_images(
    images: torch.Tensor, image_size: int | None, channels: int | None, *, resize: bool = False, name: str | None = None
) -> torch.Tensor:
    """Fit uint8 images ``(N, C, H, W)`` to ``channels`` and a square side ``image_size``.

    ``None`` keeps the images' own value.  Channels: 1 -> 3 repeats gray, 3 -> 1 takes
    BT.601 luma (rounded).  Size: smaller images are zero-padded symmetrically (0 = black,
    the digits' background); larger ones or an odd difference raise :class:`UserError`,
    unless ``resize`` is set (then center-crop to a square and bicubic resize).
    ``name`` only words the error message.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError("prepare_images expects a uint8 tensor of shape (N, C, H, W)")
    _check_channels(channels)
    _check_image_size(image_size)
    have = int(images.shape[1])
    if have not in (1, 3):
        raise UserError(f"images have {have} channels; only 1 (gray) or 3 (RGB) are supported")
    if channels is not None and channels != have:
        if channels == 3:
            images = images.repeat(1, 3, 1, 1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=images.device)
            luma = torch.einsum("nchw,c->nhw", images.to(torch.float32), weights)
            images = luma.round_().clamp_(0, 255).to(torch.uint8).unsqueeze(1)
    if image_size is None:
        return images.contiguous()
    height, width = int(images.shape[2]), int(images.shape[3])
    if (height, width) == (image_size, image_size):
        return images.contiguous()
    if resize:
        return _resize_tensor(images, image_size)
    dh, dw = image_size - height, image_size - width
    what = f"{name} images" if name else "images"
    native = max(height, width)
    if dh < 0 or dw < 0:
        raise UserError(
            f"{what} are {height}×{width} but the model expects {image_size}; use "
            f"--image-size {native} or a preset whose sample size is ≥ {native}"
        )
    if dh % 2 or dw % 2:
        raise UserError(
            f"{what} are {height}×{width} but the model expects {image_size}, and zero-padding "
            f"needs the same margin on both sides; use --image-size {native} or {image_size + 1} "
            f"(a size ≥ {native} that differs from it by an even number)"
        )
    out = torch.zeros(
        (images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8, device=images.device
    )
    out[:, :, dh // 2 : dh // 2 + height, dw // 2 : dw // 2 + width] = images
    return out


def image_digest(images: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of a uint8 image tensor's shape and pixel bytes."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("image_digest expects a uint8 tensor")
    array = np.ascontiguousarray(images.detach().cpu().numpy())
    digest = hashlib.sha256()
    # The shape goes in too: the same bytes read as other dimensions are other images.
    digest.update(repr(tuple(array.shape)).encode())
    # hashlib reads the numpy buffer in place (no copy), and releases the GIL on large inputs.
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def data_fingerprint(images: ImageSet, split: str, *, labels: bool = False) -> dict:
    """What identifies a run's training data, as JSON-able values.

    ``digest`` covers the pixels exactly as the network sees them (after
    :func:`prepare_images`), so two folders with the same name but other images, or the same
    images padded or converted differently, never share it; ``source`` is for people only
    (it names a path, which may move without the data changing).  With ``labels`` (a class-conditional
    run, which trains on them) ``labels`` is the digest of the label of every image; without, the
    fingerprint is what it always was, so the identity of unconditional runs does not change.
    """
    split_name = None if images.name == "imagefolder" else _canonical_split(split)  # a folder has no splits
    fingerprint = {
        "dataset": images.name,
        "split": split_name,
        "count": len(images),
        "shape": [int(v) for v in images.images.shape[1:]],
        "digest": image_digest(images.images),
        "source": images.source,
    }
    if labels:
        fingerprint["labels"] = label_digest(images)
    return fingerprint


def label_digest(images: ImageSet) -> str:
    """First 16 hex digits of the SHA-256 of the images' labels (int64) and class names."""
    if images.labels is None:
        raise UserError(
            f"class labels were asked for, and {images.name} from {images.source} has none; "
            "put the images in one subfolder per class"
        )
    digest = hashlib.sha256()
    digest.update(repr(images.classes).encode())
    digest.update(memoryview(np.ascontiguousarray(images.labels.to(torch.int64).cpu().numpy())).cast("B"))
    return digest.hexdigest()[:16]


def to_model_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return batch_uint8.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_range`: clamp to [-1, 1], scale, round, uint8."""
    return ((x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def _canonical_split(split: str) -> str:
    key = str(split).strip().lower()
    if key in ("train", "training"):
        return "train"
    if key in ("test", "t10k"):
        return "test"
    raise UserError(f"unknown split {split!r}; use --split train or --split test")


def _check_channels(channels) -> None:
    if channels is not None and channels not in (1, 3):
        raise UserError(f"channels must be 1 (gray) or 3 (RGB), not {channels!r}; use --channels 1 or 3")


def _check_image_size(image_size) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"image size must be a positive integer, not {image_size!r}; fix --image-size")


def _resize_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop to a square, then bicubic (antialiased) resize to ``size``; uint8 in and out."""
    height, width = int(images.shape[2]), int(images.shape[3])
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    images = images[:, :, top : top + side, left : left + side]
    if side == size:
        return images.contiguous()
    resized = torch.nn.functional.interpolate(
        images.to(torch.float32), size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)
