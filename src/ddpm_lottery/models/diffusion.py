"""The diffusion process: diffusers' schedulers for training noise and for sampling.

Training uses ``DDPMScheduler.add_noise`` with a linear beta schedule and the MSE of the
predicted noise (Ho et al. 2020).  Sampling uses one of three interchangeable diffusers
schedulers built from the same betas: DDPM ancestral (fixed-large variance, as in DDPM's
CIFAR-10 samples), DDIM (k steps, eta) and DPM-Solver++ (k steps, 2nd order multistep).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm_lottery.config import DiffusionConfig
from ddpm_lottery.models.conditioning import Guidance
from ddpm_lottery.models.families import denoise
from ddpm_lottery.utils.errors import UserError

SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
DEFAULT_SAMPLING_STEPS = {"ddpm": 1000, "ddim": 50, "dpm-solver++": 20}


def sampling_steps(sampling) -> int:
    """The denoising steps of a sampling section (the sampler's own default when unset; bounds are declared)."""
    return DEFAULT_SAMPLING_STEPS[sampling.sampler] if sampling.sampling_steps is None else sampling.sampling_steps


def unclipped(sampling) -> bool:
    """Does a sampling section turn x_0 clipping off where the sampler would clip (DDPM, DDIM)?"""
    return not sampling.clip_sample and sampling.sampler != "dpm-solver++"


def noise_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The forward process q(x_t | x_0) used for training (and DDPM ancestral sampling)."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        variance_type="fixed_large",
        clip_sample=True,
    )


def training_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Simple DDPM loss: MSE between the network's prediction and its target (``labels``: a conditional
    network's class labels, the dropped ones already replaced by the null class)."""
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = denoise(model, noisy, timesteps, labels)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    return F.mse_loss(prediction.float(), target.float())


def sampling_scheduler(config: DiffusionConfig, sampler: str, num_steps: int, clip_sample: bool = True):
    """A fresh sampler scheduler with ``set_timesteps`` already called.

    ``clip_sample`` clips DDPM's and DDIM's predicted x_0 to [-1, 1] at every step. diffusers' DDIM then steps
    with the clipped x_0 but the unclipped noise prediction; on under-trained networks that inconsistency
    accumulates with the number of steps (DDIM 100 scores worse than DDIM 10), which the unclipped sampler of the
    DDIM paper does not do."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if num_steps <= 0 or num_steps > config.num_train_timesteps:
        raise UserError(f"sampling steps must be between 1 and {config.num_train_timesteps}, got {num_steps}")
    base = noise_scheduler(config).config
    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(base, clip_sample=clip_sample)
    elif sampler == "ddim":
        scheduler = DDIMScheduler.from_config(base, clip_sample=clip_sample, set_alpha_to_one=True)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True
        )
    scheduler.set_timesteps(num_steps)
    return scheduler


def per_image_generators(seed: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image: image i gets the same noise whatever the batch size."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + first + i) for i in range(count)]


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    config: DiffusionConfig,
    *,
    sampler: str = "ddim",
    num_steps: int | None = None,
    num_samples: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    eta: float = 0.0,
    clip_sample: bool = True,
    device: torch.device | str = "cpu",
    first_index: int = 0,
    on_step: Callable[[int, int], None] | None = None,
    on_intermediate: Callable[[int, torch.Tensor], None] | None = None,
    guidance: Guidance | None = None,
) -> torch.Tensor:
    """Generate ``num_samples`` images as float tensors in [-1, 1] (on the CPU).

    Image i's noise comes from its own generator, so ``first_index`` = k gives images k, k+1, ... of the
    same seed: a long sampling can be drawn in parts (and resumed) with the same result.  A class-conditional
    network takes ``guidance`` (:func:`~ddpm_lottery.models.conditioning.guidance_for`): image i's class is a
    function of i as well.
    ``on_step(done, total)`` is called after every denoiser call (for progress bars);
    ``on_intermediate(timestep, x_t)`` sees each intermediate batch (for the denoising figure).
    """
    num_steps = DEFAULT_SAMPLING_STEPS.get(sampler, 1) if num_steps is None else num_steps
    if num_samples <= 0:
        raise UserError(f"the number of samples must be positive, got {num_samples}")
    if batch_size <= 0:
        raise UserError(f"the sampling batch size must be positive, got {batch_size}")
    model.eval()
    channels = model.config.in_channels
    size = model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    outputs = []
    total_calls = num_steps * ((num_samples + batch_size - 1) // batch_size)
    done = 0
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        generators = per_image_generators(seed, first_index + first, count)
        x = torch.stack([torch.randn((channels, *size), generator=g) for g in generators]).to(device)
        scheduler = sampling_scheduler(config, sampler, num_steps, clip_sample)
        labels = guidance.labels(first_index + first, count).to(device) if guidance is not None else None
        for t in scheduler.timesteps:
            t_batch = torch.full((count,), int(t), device=device, dtype=torch.long)
            if guidance is None:
                prediction = denoise(model, x, t_batch)
            else:
                prediction = guidance.predict(model, x, t_batch, labels)
            kwargs = {"generator": generators}
            if sampler == "ddim":
                kwargs["eta"] = eta
            if sampler == "dpm-solver++":
                kwargs = {"generator": generators[0]}  # only used by SDE variants
            x = scheduler.step(prediction, t, x, **kwargs).prev_sample
            if on_intermediate is not None:
                on_intermediate(int(t), x)
            done += 1
            if on_step is not None:
                on_step(done, total_calls)
        outputs.append(x.clamp(-1, 1).cpu())
    return torch.cat(outputs)


@torch.no_grad()
def denoising_loss_by_band(
    model: torch.nn.Module,
    config: DiffusionConfig,
    clean: torch.Tensor,
    *,
    bands: int = 10,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image MSE of the network's prediction, averaged within each of ``bands`` equal timestep bands.

    A class-conditional network is given each image's own label (``labels``): its conditional prediction.

    Returns a (images, bands) tensor.  The timesteps (``draws`` per band, spread evenly inside it) and
    the noise are fixed by ``seed``: two networks scored with the same seed see exactly the same noisy
    inputs, so their difference is free of sampling noise, and a bootstrap over images gives its interval.
    Low bands are the late, nearly clean steps of the reverse process; high bands the early, noisy ones.
    """
    scheduler = noise_scheduler(config)
    total = config.num_train_timesteps
    if not 1 <= bands <= total:
        raise UserError(f"the number of timestep bands must be between 1 and {total}, got {bands}")
    edges = torch.linspace(0, total, bands + 1)
    offsets = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    timesteps = torch.stack(
        [(edges[b] + offsets * (edges[b + 1] - edges[b])).long().clamp(max=total - 1) for b in range(bands)]
    ).reshape(-1)  # (bands * draws,)
    model.eval()
    losses = torch.zeros(len(clean), bands, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    noise_all = torch.randn((len(clean), len(timesteps), *clean.shape[1:]), generator=generator)
    for start in range(0, len(clean), max(1, batch_size // len(timesteps))):
        chunk = clean[start : start + max(1, batch_size // len(timesteps))]
        n = len(chunk)
        x0 = chunk.repeat_interleave(len(timesteps), 0).to(device)
        t = timesteps.repeat(n).to(device)
        noise = noise_all[start : start + n].reshape(-1, *clean.shape[1:]).to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        chunk_labels = (
            labels[start : start + n].repeat_interleave(len(timesteps), 0).to(device) if labels is not None else None
        )
        prediction = denoise(model, noisy, t, chunk_labels)
        kind = scheduler.config.prediction_type
        target = noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else x0
        per_input = (prediction.float() - target.float()).square().flatten(1).mean(1).double().cpu()
        losses[start : start + n] = per_input.view(n, bands, draws).mean(2)
    return losses
