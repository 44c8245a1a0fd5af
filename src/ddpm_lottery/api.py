"""The Python API: the same operations as the CLI, on config objects.

    from ddpm_lottery import RunConfig, SampleConfig, train, sample
    config = RunConfig(); config.train.steps = 200
    run = train(config, "runs/demo")
    sample("runs/demo", SampleConfig(sampler="ddim", sampling_steps=50))
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import RunConfig, SampleConfig, config_hash, to_dict
from .data import from_model_range
from .diffusion import sample as run_sampler
from .errors import UserError
from .figures import save_grid
from .files import make_dirs, write_json
from .runs import Run, SampleFolder
from .launch import resolve_device


def default_run_dir(config: RunConfig, kind: str = "train") -> Path:
    return Path("runs") / f"{kind}-{config_hash(config)}"


def train(config: RunConfig, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, log=print) -> Path:
    """Train a DDPM into a run folder (a run with level 0 only); a finished run is left as it is."""
    from .lottery import LevelTrainer

    run_dir = Path(out) if out is not None else default_run_dir(config)
    job = LevelTrainer(config, run_dir, progress=progress, log=log)
    existed = Run.is_run(run_dir)
    run = job.open_run()
    try:
        level = run.level(0)
        if level.finished:
            log(f"{run_dir} is already finished (run {run.hash}); nothing to do")
            return run_dir
        if existed and level.checkpoints.exists() and not resume:
            raise UserError(f"{run_dir} holds an unfinished run; pass --resume to continue it, "
                            "or choose a new --out folder")
        trainer = job.trainer_for(level, None, "train")
        if resume and trainer.resume():
            log(f"resuming {run_dir} at step {trainer.step}")
        if job.processes.is_main:
            params = sum(p.numel() for p in trainer.parameters)
            network = (f"pretrained {config.model.pretrained}" if config.model.pretrained else
                       f"config {config.model.unet_config}" if config.model.unet_config else
                       f"preset {config.model.preset}")
            log(f"training {network} ({params:,} parameters) on {trainer.images.name} "
                f"({len(trainer.images.images):,} images from {trainer.images.source}) for {config.train.steps} "
                f"steps, batch {config.train.batch_size}, {trainer.processes.world_size} process(es) on "
                f"{trainer.device}")
        from .pruning import full_masks

        job.train_level(trainer, 0, full_masks(trainer.model, job.mmap.tensor_names), [], "dense", {})
        job.write_summary()
        if job.processes.is_main:
            run.write_pipeline_view()  # DDPMPipeline.from_pretrained(RUN) loads the trained model
    finally:
        job.close_run()
    return run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config of a run (a LotteryConfig for ticket searches and controls)."""
    return Run.open(run_dir).config


def load_network(run_dir: str | Path, level: int | None = None, weights: str = "ema"):
    """The network of a run's level (default: the last finished) with its trained weights, on the CPU.

    A channel ticket comes back compacted (EMA weights): the smaller network that computes the same."""
    chosen = Run.open(run_dir).pick_level(level)
    if weights == "ema" and chosen.channels_path.exists() and chosen.compact_path.exists():
        return chosen.compact_network()
    return chosen.network(weights)


def sample(run_dir: str | Path, config: SampleConfig | None = None, out: str | Path | None = None,
           *, progress: bool = True, log=print) -> Path:
    """Write a PNG grid (and optionally an .npz) of samples from a run, with how they were made."""
    from .config import check_config
    from .diffusion import sampling_steps

    # Checked against the declarations, as the flags are: a config built in code skips them otherwise.
    config = check_config(config or SampleConfig())
    sampling, num_samples = config.sampling, config.sample.num_samples
    steps = sampling_steps(sampling)
    device = resolve_device(config.runtime.device)
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    diffusion = run.config.diffusion
    if sampling.schedule:
        from .stages import StagedLevel

        if config.sample.level is not None:
            raise UserError("--schedule says which level denoises which timesteps; drop --level")
        level = StagedLevel(run, sampling.schedule)
    else:
        level = run.pick_level(config.sample.level)
    model = level.network(sampling.weights).to(device)
    folder = SampleFolder(Path(out)) if out is not None else level.samples_folder(
        f"{sampling.sampler}-{steps}steps-seed{sampling.sample_seed}-{sampling.weights}")
    make_dirs(folder.dir)
    bar = tqdm(total=1, disable=not progress, desc=f"sample {sampling.sampler}", unit="call", leave=False)

    def on_step(done, total):
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    images = run_sampler(model, diffusion, sampler=sampling.sampler, num_steps=steps, num_samples=num_samples,
                         seed=sampling.sample_seed, batch_size=sampling.sample_batch_size, eta=sampling.eta,
                         device=device, on_step=on_step)
    bar.close()
    wall = time.perf_counter() - started
    uint8 = from_model_range(images)
    save_grid(uint8, folder.grid)
    if config.sample.npz:
        from .evaluation import save_samples

        save_samples(folder.npz, uint8)
    info = {"run": str(run_dir), **level.record_fields(), "config": to_dict(config), "sampler": sampling.sampler,
            "steps": steps, "eta": sampling.eta if sampling.sampler == "ddim" else None, "num_samples": num_samples,
            "seed": sampling.sample_seed, "weights": sampling.weights, "wall_time_s": wall,
            "images_per_s": num_samples / wall, "device": str(device)}
    if hasattr(model, "accounting"):
        info["stages"] = model.accounting()
    write_json(folder.info, info)
    log(f"wrote {folder.grid} ({num_samples} samples, {sampling.sampler} {steps} steps, "
        f"seed {sampling.sample_seed}, {sampling.weights} weights, {wall:.1f} s)")
    for row in info.get("stages", []):
        log(f"  {row['range']}: {row['calls']} denoiser calls, {row['seconds']:.2f} s, "
            f"{row['flops'] / 1e9:.3g} GFLOPs ({row['flops_per_image_call'] / 1e6:.3g} MFLOPs per image and call)")
    return folder.dir


def export(run_dir: str | Path, out: str | Path, level: int | None = None, weights: str = "ema",
           log=print) -> Path:
    """Write a run level as a diffusers pipeline folder (see :mod:`ddpm_lottery.pipelines`)."""
    from .pipelines import export_level

    return export_level(run_dir, out, level, weights, log=log)


def load_pipeline(folder: str | Path):
    """A ``DDPMPipeline`` from an export folder (channel tickets come back compacted)."""
    from .pipelines import load_pipeline as load

    return load(folder)


__all__ = ["RunConfig", "SampleConfig", "train", "sample", "load_network", "load_run_config", "export",
           "load_pipeline"]
