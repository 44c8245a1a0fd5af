"""Safe file writing and reading, with one-line errors.  Knows nothing of the run layout.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed over
the target, so a killed process or a full disk never leaves a half-written file where a good one
was.  Files get the permissions the user's umask gives (``mkstemp`` alone would make them 0600).
Tensors are read from safetensors only, never from pickles.

Inside a sealed tree (a run folder: see :mod:`ddpm_lottery.utils.seals`) the JSON, safetensors and npz
writers here seal every file they write, and their readers check the seal of every file they read: no
caller can forget either.  A file that fails its check is refused in one line naming it and the ``fix``
its caller gives (the command that rebuilds it); its content is never returned.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ddpm_lottery.utils.errors import FolderBusy, UserError
from ddpm_lottery.utils.seals import (
    SCOPE_MARKER,
    SEAL_KEY,
    arrays_seal,
    check,
    json_seal,
    sealed_place,
    staging_name,
    tensors_seal,
)

TEMPORARY_SUFFIX = ".tmp"


def disk_error(path: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(
            f"the disk is full while writing {path}; free space and re-run the same command "
            "(finished files were not touched)"
        )
    if exc.errno == errno.ENOTDIR or (exc.errno == errno.EEXIST and not Path(path).is_dir()):
        return UserError(
            f"cannot write {path}: a part of that path is a regular file, not a folder; choose another --out"
        )
    return UserError(f"cannot write {path} ({exc.strerror or exc}); check the folder's permissions and free space")


def _file_mode() -> int:
    # os.umask can only be read by setting it; put it straight back
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def make_dirs(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a regular file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(path, exc) from None
    return path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise disk_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (not recursive)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON; in a sealed tree (``data`` is then an object) with its seal as a last key."""
    text = json.dumps(data, indent=2, sort_keys=False)
    place = sealed_place(path)
    if place is not None:
        if not isinstance(data, dict):
            raise TypeError(f"{path} is in a sealed folder: only a JSON object can carry its seal")
        # sealed as it will be read back (tuples as lists, keys as strings), less a stale seal
        plain = {k: v for k, v in json.loads(text).items() if k != SEAL_KEY}
        text = json.dumps({**plain, SEAL_KEY: json_seal(place, plain)}, indent=2, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    place = sealed_place(path)
    if place is not None:
        plain = {k: v for k, v in (metadata or {}).items() if k != SEAL_KEY}
        metadata = {**plain, SEAL_KEY: tensors_seal(place, contiguous, plain)}
    with atomic_path(path) as tmp:
        try:
            save_file(contiguous, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            raise _os_error(exc) from None


def _os_error(exc: SafetensorError) -> OSError:
    """safetensors reports a failed write (a full disk, say) as its own error, with the OS error number in the
    text ("I/O error: No space left on device (os error 28)"); give it back as the OSError it was."""
    found = re.search(r"os error (\d+)", str(exc))
    number = int(found.group(1)) if found else errno.EIO
    return OSError(number, os.strerror(number) if found else str(exc))


def read_json(path: str | Path, what: str = "file", fix: str = "re-run the command that writes it") -> Any:
    """The JSON in ``path``, its seal checked and left out."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{what} {path} is corrupt (not valid JSON); {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror or exc}); {fix}") from None
    found = data.pop(SEAL_KEY, None) if isinstance(data, dict) else None
    check(path, None if found is None else str(found), lambda place: json_seal(place, data), what, fix)
    return data


def load_tensors(
    path: str | Path, what: str = "weights file", fix: str = "re-run the command that writes it"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle), its seal checked, with a one-line error when it is missing,
    unreadable or fails its check."""
    return load_tensors_and_metadata(path, what, fix)[0]


def load_tensors_and_metadata(
    path: str | Path, what: str = "weights file", fix: str = "re-run the command that writes it"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`load_tensors` and the file's metadata (less its seal)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{what} {path} is corrupt or not a safetensors file ({str(exc).splitlines()[0]}); {fix}"
        ) from None
    found = metadata.pop(SEAL_KEY, None)
    check(path, found, lambda place: tensors_seal(place, tensors, metadata), what, fix)
    return tensors, metadata


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Write numpy arrays to a compressed npz file; in a sealed tree with its seal as one more array."""
    place = sealed_place(path)
    if place is not None:
        arrays = {**arrays, SEAL_KEY: np.array(arrays_seal(place, arrays))}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_arrays(
    path: str | Path, what: str = "array file", fix: str = "re-run the command that writes it"
) -> dict[str, np.ndarray]:
    """The arrays of an npz file (never pickled objects), its seal checked and left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; {fix}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{what} {path} is corrupt or not an npz file ({str(exc).splitlines()[0]}); {fix}") from None
    found = arrays.pop(SEAL_KEY, None)
    check(path, None if found is None else str(found), lambda place: arrays_seal(place, arrays), what, fix)
    return arrays


def mark_tree(folder: str | Path, scope: str) -> None:
    """Make ``folder`` a sealed tree named ``scope``: the files written inside it from now on are sealed."""
    write_text(Path(folder) / SCOPE_MARKER, scope + "\n")


def hash_file(digest, path: str | Path):
    """Feed a file to a ``hashlib`` object in 1 MiB chunks (a weights file never sits in memory whole)."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_digest(path: str | Path, length: int | None = 16, algorithm: str = "sha256") -> str:
    """The file's hex digest, cut to ``length`` characters (None: whole)."""
    return hash_file(hashlib.new(algorithm), path).hexdigest()[:length]


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log; a line cut by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop log lines past ``max_step`` (written after the checkpoint a resume starts from)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [json.dumps(r) for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temporary folder into place (the old one is removed only afterwards)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_file(
    src: str | Path, dst: str | Path, what: str = "file", fix: str = "re-run the command that writes it"
) -> None:
    """Copy a file atomically (a full disk leaves ``dst`` as it was, and says so in one line).

    A JSON, safetensors or npz file is read through its checked reader and written through its writer, so
    its seal is checked at ``src`` and made anew for ``dst`` (a seal binds a file to its place)."""
    suffix = Path(dst).suffix
    if suffix == ".json":
        write_json(dst, read_json(src, what, fix))
    elif suffix == ".safetensors":
        save_tensors(dst, *load_tensors_and_metadata(src, what, fix))
    elif suffix == ".npz":
        save_arrays(dst, **load_arrays(src, what, fix))
    else:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


@contextmanager
def staged_folder(out: str | Path):
    """Yield a temporary folder beside ``out`` to fill; it replaces ``out`` only once complete.

    Writers from other libraries (diffusers' ``save_pretrained``, safetensors) fail in their own ways on a
    full disk: whatever they raise as an OSError or a safetensors error becomes the one-line disk error, and
    the partial folder is removed."""
    out = Path(out)
    staging = out.with_name(staging_name(out.name))
    shutil.rmtree(staging, ignore_errors=True)
    make_dirs(staging)
    try:
        yield staging
        replace_dir(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_error(out, exc) from None
    except SafetensorError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_error(out, _os_error(exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time.

    ``flock`` locks die with their process, so a lock left by a killed run never blocks the next
    one; the holder's pid is written into the lock file only to name it in the error.
    """

    def __init__(self, folder: str | Path, name: str = ".lock"):
        self.path = Path(folder) / name
        self._handle = None

    def acquire(self) -> None:
        make_dirs(self.path.parent)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderBusy(
                f"{self.path.parent} is in use by process {holder}; wait for it to finish or stop it "
                "(a killed process releases the lock by itself)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
