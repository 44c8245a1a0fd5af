"""A level's resumable training states: the newest valid checkpoint, written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ddpm_lottery.runs.layout import CHECKPOINT_PATTERN
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import (
    file_digest,
    load_tensors,
    read_json,
    remove_temporaries,
    save_tensors,
    write_json,
)


class Checkpoints:
    """Resumable states of one level: ``step_XXXXXXXX.safetensors`` + ``.json`` and ``latest.json``.

    Each state's JSON carries the digest of its tensors file and is written after it, so a state
    whose JSON exists and whose digest verifies is complete.  Loading falls back to the newest
    state that verifies, so a corrupt or deleted newest checkpoint costs only the steps since the
    one before.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def pointer(self) -> Path:
        return self.folder / "latest.json"

    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("step_*.json"))

    def save(self, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = 2) -> None:
        name = f"step_{step:08d}"
        tensor_path = self.folder / f"{name}.safetensors"
        save_tensors(tensor_path, tensors)
        write_json(self.folder / f"{name}.json", {**state, "step": step, "digest": file_digest(tensor_path)})
        write_json(self.pointer, {"checkpoint": name, "step": step})
        for old in self._states()[keep:]:
            self._remove(old)

    def _states(self) -> list[str]:
        """Checkpoint names with a JSON state, newest first."""
        if not self.folder.is_dir():
            return []
        names = [p.stem for p in self.folder.glob("step_*.json") if CHECKPOINT_PATTERN.match(p.stem)]
        return sorted(names, reverse=True)

    def _remove(self, name: str) -> None:
        (self.folder / f"{name}.json").unlink(missing_ok=True)
        (self.folder / f"{name}.safetensors").unlink(missing_ok=True)

    def check_pointer(self) -> None:
        """``latest.json`` must name a checkpoint of this folder; anything else is refused."""
        if not self.pointer.exists():
            return
        data = read_json(
            self.pointer, "checkpoint pointer", f"delete {self.pointer} to resume from the newest valid checkpoint"
        )
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or not CHECKPOINT_PATTERN.match(name):
            raise UserError(
                f"checkpoint pointer {self.pointer} does not name a checkpoint of this folder "
                f"({json.dumps(data)[:60]}); delete it to resume from the newest valid checkpoint"
            )

    def clean(self) -> None:
        """Remove what a killed writer left: temporaries, tensors without their state, states without tensors."""
        if not self.folder.is_dir():
            return
        remove_temporaries(self.folder)
        states = set(self._states())
        for path in self.folder.glob("step_*.safetensors"):
            if path.stem not in states:
                path.unlink(missing_ok=True)
        for name in states:
            if not (self.folder / f"{name}.safetensors").exists():
                (self.folder / f"{name}.json").unlink(missing_ok=True)

    def load_latest(self, log=print) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """The newest checkpoint that verifies, as (state, tensors); None if there is none."""
        self.check_pointer()
        for name in self._states():
            try:
                state = read_json(self.folder / f"{name}.json", "checkpoint state")
                tensor_path = self.folder / f"{name}.safetensors"
                if not isinstance(state, dict) or state.get("digest") != file_digest(tensor_path):
                    raise UserError(f"checkpoint {tensor_path} does not match its recorded digest")
                return state, load_tensors(tensor_path, "checkpoint")
            except (UserError, OSError) as exc:
                log(f"skipping checkpoint {self.folder / name}: {exc}; falling back to an earlier one")
        return None

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
