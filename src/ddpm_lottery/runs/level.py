"""One level of a run: its folder, the files in it, and reading them back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ddpm_lottery.runs.checkpoints import Checkpoints
from ddpm_lottery.runs.layout import level_name
from ddpm_lottery.runs.outputs import SampleFolder
from ddpm_lottery.runs.records import EvaluationRecord, LevelCosts, LevelMetrics, read_record
from ddpm_lottery.runs.sparse_export import load_sparse
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import (
    load_arrays,
    load_tensors,
    read_jsonl,
    save_arrays,
)


class RunFolder(Protocol):
    """What a level reads of its run (``runs.run.Run``, which builds levels): named here rather than imported,
    so the run module depends on this one and never the reverse, not even for annotations."""

    root: Path

    def finished_levels(self) -> list[int]: ...


@dataclass(frozen=True)
class Level:
    """One level of a run: its folder and the files in it."""

    run: RunFolder
    index: int

    @property
    def dir(self) -> Path:
        return self.run.root / level_name(self.index)

    @property
    def mask_path(self) -> Path:
        return self.dir / "mask.safetensors"

    @property
    def schedule_path(self) -> Path:
        return self.dir / "schedule.json"

    @property
    def channels_path(self) -> Path:
        """Channel tickets: the kept channels of every channel group (mask.safetensors is their weight view)."""
        return self.dir / "channels.safetensors"

    @property
    def compact_path(self) -> Path:
        """Channel tickets: the physically smaller network (EMA weights), described by compact.json beside it."""
        return self.dir / "compact.safetensors"

    @property
    def compact_spec_path(self) -> Path:
        return self.dir / "compact.json"

    def weights_path(self, which: str = "raw") -> Path:
        if which not in ("raw", "ema"):
            raise UserError(f"weights must be raw or ema, got {which!r}")
        return self.dir / ("ema.safetensors" if which == "ema" else "weights.safetensors")

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def grid_path(self) -> Path:
        return self.dir / "samples.png"

    @property
    def denoising_path(self) -> Path:
        return self.dir / "denoising.npz"

    def save_denoising(self, snapshots: torch.Tensor, timesteps: list[int], how: str) -> None:
        """x_t of one image at a few steps of its denoising (uint8), for the report's Figure 3."""
        save_arrays(self.denoising_path, snapshots=snapshots.numpy(), timesteps=np.array(timesteps), how=np.array(how))

    def denoising(self) -> tuple[torch.Tensor, list[int], str] | None:
        if not self.denoising_path.exists():
            return None
        data = load_arrays(
            self.denoising_path, "denoising snapshots", f"delete {self.denoising_path} and re-run the command"
        )
        return torch.from_numpy(data["snapshots"]), [int(t) for t in data["timesteps"]], str(data["how"])

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.dir / "checkpoints")

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    @property
    def costs_path(self) -> Path:
        return self.dir / "costs.json"

    @property
    def sparse_path(self) -> Path:
        return self.dir / "sparse.safetensors"

    def samples_folder(self, name: str) -> SampleFolder:
        return SampleFolder(self.dir / "samples" / name)

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    def label(self) -> str:
        return f"{self.run.root} level {self.index}"

    def record_fields(self) -> dict:
        """What names this level in a measurement record."""
        return {"level": self.index}

    def require_finished(self) -> Level:
        if not self.finished:
            done = self.run.finished_levels()
            raise UserError(
                f"{self.run.root} has no finished level {self.index} (finished: "
                f"{', '.join(map(str, done)) or 'none'}); pick one of those or let the run finish it"
            )
        return self

    def metrics(self) -> dict:
        return read_record(
            self.metrics_path,
            LevelMetrics,
            "level metrics",
            f"delete {self.dir} and re-run the command to recompute the level",
        )

    def training_log(self) -> list[dict]:
        return read_jsonl(self.log_path)

    def state(self, which: str = "ema") -> dict[str, torch.Tensor]:
        """The level's weights. A level whose dense-format files were left out (a study committed to
        git keeps pruned levels as their sparse export, a fraction of the size) still gives its EMA
        weights, rebuilt exactly from that export; its raw weights are gone with the file."""
        self.require_finished()
        path = self.weights_path(which)
        if not path.exists() and self._ema_from_sparse(which):
            return load_sparse(self.sparse_path, self.retrain_advice())
        if not path.exists() and self.metrics_path.is_file():
            if self.sparse_path.is_file():  # its EMA weights are here: say so before suggesting a retrain
                raise UserError(
                    f"{self.label()} has no {path.name} (only its sparse export of the EMA weights is "
                    f"here); use the EMA weights where the command offers them (--weights ema), or "
                    f"{self.retrain_advice()}"
                )
            raise UserError(
                f"{self.label()} has no {path.name}; the {which} weights are needed here, so {self.retrain_advice()}"
            )
        return load_tensors(path, "level weights", f"delete {self.dir} and re-run the command to recompute the level")

    def _ema_from_sparse(self, which: str) -> bool:
        return which == "ema" and self.sparse_path.is_file() and (self.costs() or {}).get("weights") == "ema"

    def has_weights(self, which: str = "ema") -> bool:
        """Can :meth:`state` give these weights (from their file, or the EMA ones from the sparse export)?"""
        return self.weights_path(which).exists() or self._ema_from_sparse(which)

    def retrain_advice(self) -> str:
        """How to get a finished level's weights back: retrain it, and the levels pruned from it."""
        later = [i for i in self.run.finished_levels() if i > self.index]
        if not later:
            return f"delete {self.dir} and re-run the command to retrain the level"
        # the later levels were pruned from this one's weights: a retrained level alone would not fit them
        return (
            f"delete {self.dir} and the later levels ({', '.join(map(str, later))}) and re-run the command to "
            "retrain them"
        )

    # -- measurements stored beside the level ---------------------------------------------------

    def evaluation_path(self, key: str) -> Path:
        return self.eval_dir / f"{key}.json"

    def evaluation_array_path(self, key: str) -> Path:
        """Per-image values behind a record (the held-out loss of every image and band)."""
        return self.eval_dir / f"{key}.npz"

    def samples_path(self, sampling_key: str) -> Path:
        """The images one sampling protocol generated, shared by every measure of those images."""
        return self.eval_dir / f"{sampling_key}.npz"

    def evaluations(self) -> list[dict]:
        if not self.eval_dir.is_dir():
            return []
        records = []
        for path in sorted(self.eval_dir.glob("*.json")):
            record = read_record(path, EvaluationRecord, "evaluation", f"delete {path} and evaluate again")
            record.setdefault("key", path.stem)
            records.append(record)
        return records

    def costs(self) -> dict | None:
        if not self.costs_path.exists():
            return None
        fix = f"run `ddpm-lottery flops {self.run.root} --level {self.index}` to recount it"
        return read_record(self.costs_path, LevelCosts, "costs", fix)
