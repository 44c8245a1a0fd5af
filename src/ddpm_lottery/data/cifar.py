"""CIFAR-10 and CIFAR-100, read with an unpickler that builds numpy arrays only.

``cifar10``, ``cifar100``
    The canonical python-pickle batches, from the folder ``cifar-10-batches-py`` /
    ``cifar-100-python``, its parent, the ``.tar.gz`` archive or the archive's parent folder
    (read from the archive without extracting it).  Pickles are read with a restricted
    unpickler that only builds numpy arrays: a pickle that tries to load anything else is
    refused before any of its code runs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.utils.errors import UserError

_CIFAR = {
    # name: (folder in the archive, archive, train files, test files, labels key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "fine_labels", 100),
}


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # numpy pickles of protocol < 3 store bytes as _codecs.encode(text, "latin1")
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return str(obj).encode(encoding, errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes and plain Python containers; refuses any other global."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._source} is not a CIFAR batch: it tries to load {module}.{name}; "
                f"refusing to run code from a pickle"
            ) from None


def _unpickle_batch(data: bytes, source: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UserError:
        raise
    except Exception as exc:  # truncated or garbage pickles raise many kinds of errors
        raise UserError(
            f"{source} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); re-download the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"{source} is not a CIFAR batch: it holds a {type(obj).__name__}, not a dict; re-download the dataset"
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(batch: dict, label_key: str, classes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(map(str, batch))) or "none"
        raise UserError(
            f"{source} is not a CIFAR batch: it needs keys 'data' and '{label_key}' but has {keys}; "
            f"check --dataset (cifar10 vs cifar100) or re-download it"
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(
            f"{source} is not a CIFAR batch: 'data' must be uint8 of shape (N, 3072), not {what}; "
            f"re-download the dataset"
        )
    try:
        labels = np.asarray(batch[label_key])
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    except Exception:
        ok = False
    if not ok or labels.shape[0] != data.shape[0]:
        raise UserError(
            f"{source} is not a CIFAR batch: '{label_key}' must be {data.shape[0]} integers; re-download the dataset"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"{source} has labels outside 0-{classes - 1}; check --dataset (cifar10 vs cifar100)")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(name: str, root, split: str) -> ImageSet:
    folder_name, archive_name, train_files, test_files, label_key, classes = _CIFAR[name]
    files = train_files if split == "train" else test_files
    if root is None:
        raise UserError(
            f"{name} needs its python batches: pass --data-dir with {folder_name}/ or {archive_name}, or add --download"
        )
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(
            f"data path {root} does not exist; pass --data-dir with {folder_name}/ or {archive_name}, or add --download"
        )
    if root.is_dir():
        if all((root / f).is_file() for f in files):
            return _cifar_from_folder(name, root, files, label_key, classes)
        if (root / folder_name).is_dir():
            return _cifar_from_folder(name, root / folder_name, files, label_key, classes)
        if (root / archive_name).is_file():
            return _cifar_from_archive(name, root / archive_name, folder_name, files, label_key, classes)
        raise UserError(
            f"no {name} data in {root}: expected {folder_name}/ or {archive_name} (or the batch files "
            f"{', '.join(files)}); pass the right --data-dir or add --download"
        )
    return _cifar_from_archive(name, root, folder_name, files, label_key, classes)


def _cifar_from_folder(name, folder: Path, files, label_key, classes) -> ImageSet:
    parts = []
    for filename in files:
        path = folder / filename
        if not path.is_file():
            raise UserError(f"{path} is missing; {folder} is an incomplete {name} folder, re-download it")
        parts.append(_cifar_arrays(_unpickle_batch(path.read_bytes(), str(path)), label_key, classes, str(path)))
    return _cifar_set(name, parts, str(folder))


def _cifar_from_archive(name, archive: Path, folder_name, files, label_key, classes) -> ImageSet:
    # One sequential pass: seeking backwards in a .tar.gz decompresses it again from the start.
    blobs: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                path = member.name.lstrip("./")
                filename = path.rsplit("/", 1)[-1]
                if not member.isfile() or filename not in files:
                    continue
                if filename in blobs and blobs[filename][0] == f"{folder_name}/{filename}":
                    continue  # keep the canonical location when a name appears twice
                blobs[filename] = (member.name, tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"{archive} is not a readable {name} archive ({exc}); re-download it "
            f"or pass the extracted {folder_name}/ folder with --data-dir"
        ) from None
    parts = []
    for filename in files:
        if filename not in blobs:
            raise UserError(
                f"{archive} has no {folder_name}/{filename}; it is not the {name} archive "
                f"({_CIFAR[name][1]}), check --dataset or re-download it"
            )
        member_name, blob = blobs.pop(filename)
        source = f"{archive}:{member_name}"
        parts.append(_cifar_arrays(_unpickle_batch(blob, source), label_key, classes, source))
    return _cifar_set(name, parts, str(archive))


def _cifar_set(name, parts, source) -> ImageSet:
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        name=name,
        source=source,
        flip=True,
    )
