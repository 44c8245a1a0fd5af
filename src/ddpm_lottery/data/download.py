"""Downloads: the official archives of a dataset, checked against their MD5.

Downloads (:func:`download_dataset`) fetch the official archives with urllib, verify their
MD5 against :data:`CHECKSUMS` and move them into place atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ddpm_lottery.data.images import _canonical_name
from ddpm_lottery.utils.errors import UserError

logger = logging.getLogger(__name__)  # `log` is the print-like callable elsewhere

#: Default base URL of each downloadable dataset (a ``mirror`` replaces it).
DEFAULT_MIRRORS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: MD5 of every file a download fetches, per dataset (official values of the archives).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": dict(
        zip(
            _IDX_FILES,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcc2bd9a49c",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        )
    ),
    "fashion-mnist": dict(
        zip(
            _IDX_FILES,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        )
    ),
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

_DOWNLOAD_TIMEOUT = 60.0


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
        raise UserError(f"{name} cannot be downloaded (downloadable: {', '.join(CHECKSUMS)}); drop --download")
    if root is None:
        root = default_download_root(name)
    folder = Path(root).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the download folder {folder}: {exc.strerror or exc}; choose a writable --data-dir"
        ) from None
    base = mirror if mirror else DEFAULT_MIRRORS[name]
    if not base.endswith("/"):
        base += "/"
    for filename, expected in CHECKSUMS[name].items():
        target = folder / filename
        if target.is_file():
            if _md5(target) == expected:
                continue
            logger.warning("%s exists but its checksum is wrong; downloading it again", target)
        _fetch(base + filename, target, expected)
    return folder


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, target: Path, expected_md5: str) -> None:
    logger.info("downloading %s -> %s", url, target)
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
            raise UserError(
                f"could not download {url}: {reason}; check the network or --mirror, or fetch "
                f"{target.name} by hand and pass its folder with --data-dir"
            ) from None
        got = digest.hexdigest()
        if got != expected_md5:
            raise UserError(
                f"checksum mismatch for {target.name} from {url}: got {got}, expected "
                f"{expected_md5}; the download is corrupt, retry or fetch it by hand"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
