"""The Python API: the same operations as the CLI, on config objects.

    from ddpm_lottery import RunConfig, SampleConfig, train, sample
    config = RunConfig(); config.train.steps = 200
    run = train(config, "runs/demo")
    sample("runs/demo", SampleConfig(sampler="ddim", sampling_steps=50))
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from diffusers import UNet2DModel
from tqdm.auto import tqdm

from .config import RunConfig, SampleConfig, config_hash, from_dict, non_default, to_dict
from .data import from_model_range
from .diffusion import DEFAULT_SAMPLING_STEPS, SAMPLERS, sample as run_sampler
from .errors import UserError
from .figures import save_grid
from .runs import atomic_path, prepare_run_dir, read_json, write_json
from .training import Trainer, resolve_device


def default_run_dir(config: RunConfig, kind: str = "train") -> Path:
    return Path("runs") / f"{kind}-{config_hash(config)}"


def train(config: RunConfig, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, log=print) -> Path:
    """Train a DDPM into a run folder; a finished run is left as it is."""
    run_dir = Path(out) if out is not None else default_run_dir(config)
    status_path = run_dir / "status.json"
    checkpoint_pointer = run_dir / "checkpoints" / "latest.json"
    if status_path.exists() and (run_dir / "config.json").exists():
        prepare_run_dir(run_dir, config, "train")  # refuses a different config
        log(f"{run_dir} is already finished (config {config_hash(config)}); nothing to do")
        return run_dir
    if checkpoint_pointer.exists() and not resume:
        raise UserError(f"{run_dir} holds an unfinished run; pass --resume to continue it, "
                        "or choose a new --out folder")
    trainer = Trainer(config, run_dir, progress=progress)
    if trainer.processes.is_main:
        prepare_run_dir(run_dir, config, "train")
    trainer.processes.barrier()
    if resume and trainer.resume():
        log(f"resuming {run_dir} at step {trainer.step}")
    if trainer.processes.is_main:
        params = sum(p.numel() for p in trainer.parameters)
        log(f"training preset {config.model.preset} ({params:,} parameters) on {trainer.images.name} "
            f"({len(trainer.images.images):,} images from {trainer.images.source}) for {config.train.steps} "
            f"steps, batch {config.train.batch_size}, {trainer.processes.world_size} process(es) on "
            f"{trainer.device}")
    summary = trainer.run()
    trainer.export(run_dir / "model", "raw")
    trainer.export(run_dir / "ema", "ema")
    if trainer.processes.is_main:
        write_json(status_path, {"state": "finished", "steps": config.train.steps,
                                 "config_hash": config_hash(config), "finished_at": time.time(),
                                 "last_session": summary})
        log(f"finished: {run_dir} (final loss {summary['final_loss']:.4f})")
    trainer.processes.barrier()
    return run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    if not (Path(run_dir) / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of a training run")
    stored = read_json(Path(run_dir) / "config.json", "run config")
    return from_dict(RunConfig, stored.get("config", {}))


def load_network(run_dir: str | Path, weights: str = "ema") -> UNet2DModel:
    """The trained network of a run (its diffusers folder, or its latest checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass the --out folder of a training run")
    folder = run_dir / weights
    if folder.is_dir():
        try:
            return UNet2DModel.from_pretrained(folder, use_safetensors=True)
        except Exception as exc:  # diffusers raises several types for a damaged folder
            raise UserError(f"the weights in {folder} cannot be read ({str(exc).splitlines()[0]}); "
                            "re-run training with --resume to rewrite them") from None
    config = load_run_config(run_dir)
    trainer = Trainer(config, run_dir, progress=False)
    if not trainer.resume():
        raise UserError(f"{run_dir} has no trained weights yet; train it first")
    model = trainer.model.to("cpu")
    if weights == "ema":
        trainer.ema.copy_to(list(model.parameters()))
    return model


def sample(run_dir: str | Path, config: SampleConfig | None = None, out: str | Path | None = None,
           *, progress: bool = True, log=print) -> Path:
    """Write a PNG grid (and optionally an .npz) of samples from a run, with how they were made."""
    config = config or SampleConfig()
    run_dir = Path(run_dir)
    if config.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {config.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = DEFAULT_SAMPLING_STEPS[config.sampler] if config.sampling_steps is None else config.sampling_steps
    if steps <= 0:
        raise UserError(f"--sampling-steps must be positive, got {steps}")
    if config.num_samples <= 0:
        raise UserError(f"--num-samples must be positive, got {config.num_samples}")
    from .lottery import finished_levels, level_config, level_dir, level_network, run_kind

    device = resolve_device(config.device)
    level = None
    if run_kind(run_dir) == "train":
        diffusion = load_run_config(run_dir).diffusion
        model = load_network(run_dir, config.weights).to(device)
        base = run_dir
    else:  # a ticket run (or a control branch): one of its levels
        levels = finished_levels(run_dir)
        if not levels:
            raise UserError(f"{run_dir} has no finished level to sample yet; let find-ticket finish level 0")
        level = levels[-1] if config.level is None else config.level
        diffusion = level_config(run_dir).diffusion
        model = level_network(run_dir, level, config.weights).to(device)
        base = level_dir(run_dir, level)
    out_dir = Path(out) if out is not None else (
        base / "samples" / f"{config.sampler}-{steps}steps-seed{config.sample_seed}-{config.weights}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir} ({exc.strerror}); choose a writable --out") from None
    bar = tqdm(total=1, disable=not progress, desc=f"sample {config.sampler}", unit="call", leave=False)

    def on_step(done, total):
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    images = run_sampler(model, diffusion, sampler=config.sampler, num_steps=steps,
                         num_samples=config.num_samples, seed=config.sample_seed,
                         batch_size=config.sample_batch_size, eta=config.eta, device=device, on_step=on_step)
    bar.close()
    wall = time.perf_counter() - started
    uint8 = from_model_range(images)
    save_grid(uint8, out_dir / "grid.png")
    if config.npz:
        with atomic_path(out_dir / "samples.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, images=uint8.permute(0, 2, 3, 1).numpy())
    info = {"run": str(run_dir), "level": level, "config": to_dict(config), "sampler": config.sampler, "steps": steps,
            "eta": config.eta if config.sampler == "ddim" else None, "num_samples": config.num_samples,
            "seed": config.sample_seed, "weights": config.weights, "wall_time_s": wall,
            "images_per_s": config.num_samples / wall, "device": str(device)}
    write_json(out_dir / "info.json", info)
    log(f"wrote {out_dir / 'grid.png'} ({config.num_samples} samples, {config.sampler} {steps} steps, "
        f"seed {config.sample_seed}, {config.weights} weights, {wall:.1f} s)")
    return out_dir


__all__ = ["RunConfig", "SampleConfig", "train", "sample", "load_network", "load_run_config", "non_default"]
