"""Experiment trackers: TensorBoard or Weights & Biases, through Accelerate's tracker classes.

The run folder's JSON files (``metrics.jsonl``, ``metrics.json``, evaluations) are the record; a
tracker mirrors them where researchers look.  One tracker run per level (``level_00``, ``level_01``,
...) so curves of different levels overlay on one axis of steps; evaluations go to a run of their own.
Only the main process logs (Accelerate's trackers check this themselves).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ddpm_lottery.utils.errors import UserError

TRACKER_FOLDERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Tracking:
    """One tracker run; every method does nothing for ``--log-to none``."""

    def __init__(self, kind: str, run_dir: str | Path, name: str, config: dict | None = None, is_main: bool = True):
        self.kind = kind if is_main else "none"
        self.tracker = None
        if self.kind == "none":
            return
        folder = Path(run_dir) / TRACKER_FOLDERS[self.kind]
        if folder.exists() and not folder.is_dir():
            raise UserError(
                f"--log-to {self.kind} writes into {folder}, which is a file; move it away, or drop --log-to"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"--log-to {self.kind} cannot create {folder} ({exc.strerror or exc}); "
                "give --out a writable folder, or drop --log-to"
            ) from None
        try:
            if self.kind == "tensorboard":
                # deferred: the trackers need their optional extras (tensorboard, wandb)
                from accelerate.tracking import TensorBoardTracker

                self.tracker = TensorBoardTracker(name, str(folder))
            else:
                # deferred: the trackers need their optional extras (tensorboard, wandb)
                from accelerate.tracking import WandBTracker

                # without credentials W&B writes an offline run beside the others (`wandb sync` uploads it)
                mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
                self.tracker = WandBTracker(Path(run_dir).name, name=name, dir=str(folder), mode=mode, reinit=True)
            self.tracker.start()
        except OSError as exc:  # a read-only or full file system under the folder
            raise UserError(
                f"--log-to {self.kind} cannot write into {folder} ({exc.strerror or exc}); "
                "give --out a writable folder, or drop --log-to"
            ) from None
        except ImportError:
            package = "tensorboard" if self.kind == "tensorboard" else "wandb"
            raise UserError(
                f"--log-to {self.kind} needs the {package} package; pip install {package}, or drop --log-to"
            ) from None
        if config:
            self.tracker.store_init_configuration(_flat(config))

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log({k: float(v) for k, v in values.items()}, step=step)

    def images(self, name: str, images: np.ndarray, step: int) -> None:
        """``images``: uint8, (N, H, W, C)."""
        if self.tracker is None:
            return
        if self.kind == "tensorboard":
            self.tracker.log_images({name: images}, step=step, dataformats="NHWC")
        else:
            self.tracker.log_images({name: list(images)}, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


def _flat(config: dict, prefix: str = "") -> dict:
    """Trackers take flat scalar configs: nested sections become ``section.field``, lists strings."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        elif value is None:
            out[name] = "none"
        else:
            out[name] = value
    return out
