"""Seals: every file of a sealed folder carries a digest that binds its content to where it belongs.

A *sealed tree* is a folder whose root holds :data:`SCOPE_MARKER`, a one-line text naming the tree
(a run folder writes its run hash there when it is created).  Each JSON, safetensors and npz file
written inside it by :mod:`ddpm_lottery.utils.files` carries::

    seal = sha256(scope + "\\n" + the file's path inside the tree + "\\n" + its canonical content)

so an edit by hand, a file copied from another tree (another scope) and a file copied from another
place in the same tree (another level: another path) all break it, and the readers refuse the file in
one line instead of computing with it.  The seal lives inside the file it covers (a top-level key of a
JSON object, a metadata entry of a safetensors file, an extra array of an npz file), so a file and its
seal cannot be separated by copying one without the other.

Reading a file, four cases (see :func:`check`): in a sealed tree a file must carry a matching seal; a
sealed file outside any sealed tree is refused (its tree lost its marker, or the file was carried out of
it); an unsealed file outside any sealed tree was written before seals existed and is read as it is.

This module knows nothing of the run layout: only the marker's name, and the staging folders of
:func:`ddpm_lottery.utils.files.staged_folder` (``.NAME.partial`` becomes ``NAME`` when it is finished, so
a file staged there is sealed for its finished place).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_lottery.utils.errors import UserError

SCOPE_MARKER = ".seal-scope"
#: The seal's key: a top-level JSON key, a safetensors metadata key, an npz array name.
SEAL_KEY = "_seal"
STAGING_PATTERN = re.compile(r"^\.(?P<name>.+)\.partial$")


@dataclass(frozen=True)
class Place:
    """Where a file sits in its sealed tree: the tree's root, its scope and the file's path inside it."""

    root: Path
    scope: str
    relative: str


def staging_name(name: str) -> str:
    """The folder name a staging folder of :func:`~ddpm_lottery.utils.files.staged_folder` is staged for."""
    return f".{name}.partial"


def sealed_place(path: str | Path) -> Place | None:
    """The sealed tree ``path`` lies in (the nearest folder above it holding the marker), or None."""
    path = Path(path).absolute()
    for folder in path.parents:
        marker = folder / SCOPE_MARKER
        if marker.is_file():
            try:
                scope = marker.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"cannot read the seal marker {marker} ({exc}); restore it from a copy of the folder"
                ) from None
            parts = [_finished_name(part) for part in path.relative_to(folder).parts]
            return Place(folder, scope, "/".join(parts))
    return None


def _finished_name(part: str) -> str:
    staged = STAGING_PATTERN.match(part)
    return staged.group("name") if staged else part


def is_marked(folder: str | Path) -> bool:
    """Is ``folder`` inside a sealed tree?"""
    return sealed_place(Path(folder) / "_") is not None


def _digest(place: Place, feed: Callable[[Any], None]) -> str:
    digest = hashlib.sha256(f"{place.scope}\n{place.relative}\n".encode())
    feed(digest)
    return digest.hexdigest()


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def json_seal(place: Place, data: Any) -> str:
    """The seal of a JSON object (without its seal key) at ``place``."""
    return _digest(place, lambda digest: digest.update(_canonical(data)))


def tensors_seal(place: Place, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The seal of a safetensors file: every tensor's name, dtype, shape and bytes, and the other metadata."""

    def feed(digest) -> None:
        digest.update(_canonical({k: v for k, v in metadata.items() if k != SEAL_KEY}))
        for name in sorted(tensors):
            tensor = tensors[name].detach().cpu().contiguous()
            digest.update(_canonical([name, str(tensor.dtype), list(tensor.shape)]))
            # a uint8 view hashes the stored bytes of any dtype (bf16 too) without copying them
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))

    return _digest(place, feed)


def arrays_seal(place: Place, arrays: dict[str, np.ndarray]) -> str:
    """The seal of an npz file: every array's name, dtype, shape and bytes."""

    def feed(digest) -> None:
        for name in sorted(k for k in arrays if k != SEAL_KEY):
            array = np.ascontiguousarray(arrays[name])
            digest.update(_canonical([name, array.dtype.str, list(array.shape)]))
            digest.update(memoryview(array.reshape(-1).view(np.uint8)))

    return _digest(place, feed)


def check(path: Path, found: str | None, expected: Callable[[Place], str], what: str, fix: str) -> None:
    """Refuse ``path`` in one line unless its seal ``found`` is what its content and place give."""
    place = sealed_place(path)
    if place is None:
        if found is not None:
            raise UserError(
                f"{what} {path} is sealed, but no folder above it holds its seal marker {SCOPE_MARKER} (the "
                f"marker was removed, or the file was copied out of its run); {fix}"
            )
        return  # written before seals existed: the run's note says its files are unverified
    if found is None:
        raise UserError(
            f"{what} {path} carries no seal, though its folder {place.root} is sealed (the file was put there "
            f"by hand or its seal removed); {fix}"
        )
    if found != expected(place):
        raise UserError(
            f"{what} {path} does not match its seal (edited by hand, or copied from another run or another "
            f"level); it is not used; {fix}"
        )
