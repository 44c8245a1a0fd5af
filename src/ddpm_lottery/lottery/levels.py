"""Training one level of a run and storing it: what every run kind (training, search, control, range) shares.

A level is trained to the end, then stored: masks, raw and EMA weights, what its ticket kind adds
(a channel ticket's compacted network), a sample grid, and ``metrics.json`` last, whose presence marks
the level finished.  The folder layout is the run model's (:mod:`ddpm_lottery.runs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lottery.config import RunConfig, to_dict
from ddpm_lottery.data.images import data_fingerprint, from_model_range
from ddpm_lottery.lottery.costs import stored_costs
from ddpm_lottery.lottery.tickets import tickets_for
from ddpm_lottery.models.conditioning import Guidance, adopt_classes
from ddpm_lottery.models.diffusion import sample as run_sampler
from ddpm_lottery.models.families import family_of
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.models.sources import adopt_source
from ddpm_lottery.pruning.masks import count_kept, count_total, save_masks
from ddpm_lottery.pruning.modules import ModuleMap, module_map
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.tracking import Tracking
from ddpm_lottery.training.trainer import StepHooks, Trainer, load_run_images
from ddpm_lottery.utils.figures import save_grid
from ddpm_lottery.utils.files import save_tensors, write_json
from ddpm_lottery.utils.launch import Processes, setup_processes


def level_metrics(
    level: int,
    masks,
    mmap: ModuleMap,
    total_params: int,
    summary: dict,
    schedule: list[dict],
    strategy: str,
    wall_time: float,
    extra: dict | None = None,
) -> dict:
    kept, prunable = count_kept(masks), count_total(masks)
    per_tensor = {n: 1 - int(masks[n].sum()) / masks[n].numel() for n in mmap.tensor_names}
    per_module = []
    for module in mmap.modules:
        m_kept = sum(int(masks[n].sum()) for n in module.tensors)
        per_module.append(
            {
                "index": module.index,
                "name": module.name,
                "size": module.size,
                "kept": m_kept,
                "sparsity": 1 - m_kept / module.size,
            }
        )
    return {
        "level": level,
        "strategy": strategy if level else "dense",
        "sparsity": 1 - kept / prunable,
        "sparsity_all_parameters": (prunable - kept) / total_params,
        "prunable_parameters": prunable,
        "surviving_prunable": kept,
        "total_parameters": total_params,
        "surviving_parameters": total_params - (prunable - kept),
        "per_module": per_module,
        "per_tensor": per_tensor,
        "schedule_applied": schedule,
        "training": summary,
        "wall_time_s": wall_time,
        **(extra or {}),
    }


def track_level(tracking: Tracking, metrics: dict, level: Level, step: int) -> None:
    """A finished level in the tracker: its sparsities, per-module sparsity and sample grid; then close it."""
    if tracking.active:
        values = {
            "level/sparsity": metrics["sparsity"],
            "level/final_loss": metrics["training"]["final_loss"],
            "level/sparsity_all_parameters": metrics["sparsity_all_parameters"],
        }
        if "channel_sparsity" in metrics:
            values["level/channel_sparsity"] = metrics["channel_sparsity"]
        values.update({f"module_sparsity/{m['index']:02d}_{m['name']}": m["sparsity"] for m in metrics["per_module"]})
        tracking.scalars(values, step)
        if level.grid_path.exists():
            tracking.images("level/samples", np.asarray(Image.open(level.grid_path).convert("RGB"))[None], step)
    tracking.close()


def _grid(trainer: Trainer, config, level: Level, samples: int, steps: int, snapshots: int = 7) -> dict:
    """A small DDIM grid of the level's EMA weights (a visual check, not a metric), and the first image's
    denoising trajectory (the report's Figure 3), both stored beside the level."""
    backup = [p.detach().clone() for p in trainer.parameters]
    trainer.ema.copy_to(trainer.parameters)
    captured: list[tuple[int, torch.Tensor]] = []
    try:
        images = run_sampler(
            trainer.model,
            config.diffusion,
            sampler="ddim",
            num_steps=steps,
            num_samples=samples,
            seed=0,
            device=trainer.device,
            on_intermediate=lambda t, x: captured.append((t, x[0].detach().cpu().clone())),
            guidance=Guidance(config.model.num_classes) if config.model.class_conditional else None,
        )
    finally:
        with torch.no_grad():
            for p, b in zip(trainer.parameters, backup):
                p.copy_(b)
    save_grid(from_model_range(images), level.grid_path)
    picks = sorted({round(i * (len(captured) - 1) / (snapshots - 1)) for i in range(snapshots)})
    level.save_denoising(
        from_model_range(torch.stack([captured[i][1].clamp(-1, 1) for i in picks])),
        [captured[i][0] for i in picks],
        f"DDIM {steps} steps, noise seed 0, EMA weights",
    )
    return {"samples": samples, "sampler": "ddim", "steps": steps, "seed": 0, "weights": "ema"}


class LevelTrainer:
    """What every run kind shares: its data, processes, network description, and training one level."""

    kind = "train"

    def __init__(
        self,
        config: RunConfig,
        out: str | Path,
        *,
        progress: bool = True,
        log=print,
        after_level: Callable[[Level], None] | None = None,
    ):
        self.config, self.out, self.progress, self.log = adopt_source(config), Path(out), progress, log
        self.after_level = after_level
        self.processes: Processes = setup_processes(config.runtime.device, config.train.mixed_precision)
        self.images = load_run_images(config)
        adopt_classes(config, self.images)
        # the labels are part of a class-conditional run's data, and of no other's
        self.fingerprint = data_fingerprint(self.images, config.data.split, labels=config.model.class_conditional)
        probe = build_model(
            config.model,
            self.images.images.shape[1],
            seed=config.train.seed_init,
            image_size=self.images.images.shape[-1],
        )
        prune = getattr(config, "prune", None)
        self.mmap = module_map(
            probe,
            prune.granularity if prune else "block",
            prune.include if prune else (),
            prune.exclude if prune else (),
            prune.layer_groups if prune else (),
        )
        self.total_params = sum(p.numel() for p in probe.parameters())
        self.tickets = tickets_for(probe, self.mmap, prune)  # single weights or whole channels
        self.network_config = family_of(probe).network_config(probe)
        self.run: Run | None = None
        self._lock = None

    def trainer_for(self, level: Level, hooks: StepHooks | None, description: str) -> Trainer:
        tracking = Tracking(
            self.config.runtime.log_to, self.out, level.dir.name, to_dict(self.config), is_main=self.processes.is_main
        )
        return Trainer(
            self.config,
            level,
            images=self.images,
            hooks=hooks,
            progress=self.progress,
            description=description,
            processes=self.processes,
            log=self.log,
            tracking=tracking,
        )

    def open_run(self, extra: dict | None = None) -> Run:
        """Create or reopen the run folder (main process), take its lock, clean what a kill left."""
        if self.processes.is_main:
            self.run = Run.prepare(self.out, self.config, self.kind, self.fingerprint, extra=extra, log=self.log)
            self._lock = self.run.lock()
            self._lock.acquire()
            self.run.clean_leftovers()
            if not self.run.modules_path.exists():
                write_json(self.run.modules_path, self.mmap.to_json())
            if not self.run.network_path.exists():
                write_json(self.run.network_path, self.network_config)
            self.tickets.store_with_run(self.run)
        self.processes.barrier()
        if self.run is None:
            self.run = Run.open(self.out)
        return self.run

    def close_run(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def train_level(
        self, trainer: Trainer, index: int, masks, schedule: list[dict], strategy: str, extra: dict
    ) -> dict:
        """Train a level to the end and store it; metrics.json is written last and marks it finished."""
        level = trainer.level
        summary = trainer.run()
        metrics = None
        if self.processes.is_main:
            if not level.mask_path.exists():  # pruned levels stored theirs before training
                save_masks(level.mask_path, masks)
            save_tensors(level.weights_path("raw"), trainer.weights())
            save_tensors(level.weights_path("ema"), trainer.ema_weights())
            prune = getattr(self.config, "prune", None)
            extra = {
                **extra,
                **self.tickets.level_structure(lambda: self.trained_network(trainer), level, self.total_params),
            }
            grid = _grid(
                trainer,
                self.config,
                level,
                prune.level_samples if prune else 16,
                prune.level_sampling_steps if prune else 20,
            )
            metrics = level_metrics(
                index,
                masks,
                self.mmap,
                self.total_params,
                summary,
                schedule,
                strategy,
                summary["wall_time_s"],
                {**extra, "level_samples": grid},
            )
            write_json(level.metrics_path, metrics)
            # the sparse export now, not when the level is first measured: a level whose dense files are left out
            # of git (a committed study keeps pruned levels this way) keeps its weights only through it
            stored_costs(level)
            level.checkpoints.remove_all()
            track_level(trainer.tracking, metrics, level, trainer.step)
            self.log(f"level {index}: done, sparsity {metrics['sparsity']:.4f}, final loss {summary['final_loss']:.4f}")
            # one process only: with several, the others would wait at the next collective while it runs (and a
            # collective times out); their run is measured when it has finished instead
            if self.after_level is not None and self.processes.world_size == 1:
                self.after_level(level)
        self.processes.barrier()
        return metrics

    def trained_network(self, trainer: Trainer) -> torch.nn.Module:
        """A fresh network holding the trainer's EMA weights (what a level's compaction starts from)."""
        network = build_model(self.config.model, self.images.images.shape[1], image_size=self.images.images.shape[-1])
        network.load_state_dict(trainer.ema_weights())
        return network

    def write_summary(self) -> list[dict]:
        rows = []
        if self.processes.is_main:
            for index in self.run.finished_levels():
                m = self.run.level(index).metrics()
                rows.append(
                    {
                        "level": m["level"],
                        "sparsity": m["sparsity"],
                        **({"channel_sparsity": m["channel_sparsity"]} if "channel_sparsity" in m else {}),
                        "sparsity_all_parameters": m["sparsity_all_parameters"],
                        "surviving_parameters": m["surviving_parameters"],
                        "final_loss": m["training"]["final_loss"],
                        "wall_time_s": m["wall_time_s"],
                    }
                )
            self.run.write_summary(rows)
        return rows


def apply_masks(weights: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """theta * m with +0.0 at pruned positions; survivors keep their exact bits."""
    return {
        n: torch.where(masks[n].to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device)) if n in masks else w
        for n, w in weights.items()
    }
