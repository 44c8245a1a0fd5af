"""Run folders and safe file writing.

A run is a folder readable without the code::

    RUN/config.json            full config, its hash, the non-default fields
    RUN/metrics.jsonl          one JSON object per logged step
    RUN/checkpoints/           resumable checkpoints: step_XXXXXXXX.safetensors + .json,
                               and latest.json naming the newest complete one
    RUN/model/, RUN/ema/       final weights as diffusers folders (config.json + safetensors)
    RUN/status.json            {"state": "finished", ...} once training is complete
    RUN/samples/...            sample grids with the sampler and steps beside them

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed
over the target, so a killed process or a full disk never leaves a half-written file where a
good one was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import config_hash, non_default, to_dict
from .errors import UserError


def _disk_error(path: Path, exc: OSError) -> UserError:
    if exc.errno == errno.ENOSPC:
        return UserError(f"the disk is full while writing {path}; free space and re-run with --resume "
                         "(finished files were not touched)")
    return UserError(f"cannot write {path} ({exc.strerror or exc}); check the folder's permissions and free space")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; the run folder is incomplete, re-run the command") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{what} {path} is corrupt (not valid JSON); delete it or restore it from a backup") from None


def load_tensors(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle) with a one-line error when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; re-run the step that writes it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{what} {path} is corrupt or not a safetensors file ({str(exc).splitlines()[0]}); "
                        "delete it to fall back to an earlier checkpoint, or re-run from scratch") from None


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop log lines past ``max_step`` (written after the checkpoint a resume starts from)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def prepare_run_dir(run_dir: str | Path, config, kind: str) -> tuple[Path, bool]:
    """Create or re-open a run folder; refuse one that holds a different config.

    Returns (path, existed).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    digest = config_hash(config)
    if config_path.exists():
        stored = read_json(config_path, "run config")
        if stored.get("hash") != digest or stored.get("kind") != kind:
            raise UserError(
                f"{run_dir} already holds a different {stored.get('kind', 'run')} (config hash "
                f"{stored.get('hash')}, this one is {digest}); use another --out folder or delete that one")
        return run_dir, True
    if run_dir.exists() and any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        raise UserError(f"{run_dir} exists and is not a ddpm-lottery run folder; choose an empty or new --out folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(run_dir, exc) from None
    write_json(config_path, {"kind": kind, "hash": digest, "non_default": non_default(config),
                             "config": to_dict(config)})
    return run_dir, False


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
