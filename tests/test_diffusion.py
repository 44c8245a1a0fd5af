import pytest
import torch

from ddpm_lottery.config import DiffusionConfig, ModelConfig
from ddpm_lottery.models.diffusion import SAMPLERS, noise_scheduler, sample, sampling_scheduler, training_loss
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.utils.errors import UserError


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(preset="tiny", block_out_channels=(8, 8, 8)), 1)


def test_linear_schedule_matches_ddpm():
    scheduler = noise_scheduler(DiffusionConfig())
    assert len(scheduler.betas) == 1000
    assert scheduler.betas[0].item() == pytest.approx(1e-4) and scheduler.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(scheduler.alphas_cumprod.double(), expected, atol=1e-6)


def test_loss_is_mse_of_the_noise(model):
    scheduler = noise_scheduler(DiffusionConfig())
    clean = torch.rand(4, 1, 28, 28) * 2 - 1
    noise = torch.randn_like(clean)
    t = torch.tensor([0, 10, 500, 999])
    loss = training_loss(model, scheduler, clean, noise, t)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    with torch.no_grad():
        manual = ((model(noisy, t).sample - noise) ** 2).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_is_seeded_and_shaped(model, sampler):
    kwargs = dict(sampler=sampler, num_steps=4, num_samples=3, batch_size=2)
    a = sample(model, DiffusionConfig(), seed=1, **kwargs)
    b = sample(model, DiffusionConfig(), seed=1, **kwargs)
    c = sample(model, DiffusionConfig(), seed=2, **kwargs)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_step_counts():
    assert len(sampling_scheduler(DiffusionConfig(), "ddim", 50).timesteps) == 50
    assert len(sampling_scheduler(DiffusionConfig(), "ddpm", 1000).timesteps) == 1000
    assert len(sampling_scheduler(DiffusionConfig(), "dpm-solver++", 20).timesteps) == 20


@pytest.mark.parametrize(
    "sampler,steps,match", [("euler", 10, "unknown sampler"), ("ddim", 0, "between"), ("ddim", 5000, "between")]
)
def test_bad_sampler_settings(sampler, steps, match):
    with pytest.raises(UserError, match=match):
        sampling_scheduler(DiffusionConfig(), sampler, steps)


def test_denoising_loss_by_band_is_fixed_by_its_seed():
    from ddpm_lottery.config import DiffusionConfig, ModelConfig
    from ddpm_lottery.models.diffusion import denoising_loss_by_band
    from ddpm_lottery.models.networks import build_model

    model = build_model(ModelConfig(preset="tiny", block_out_channels=(8, 8, 8)), 1, seed=0)
    clean = torch.rand(6, 1, 28, 28) * 2 - 1
    config = DiffusionConfig()
    a = denoising_loss_by_band(model, config, clean, bands=4, draws=2, seed=3, batch_size=5)
    b = denoising_loss_by_band(model, config, clean, bands=4, draws=2, seed=3, batch_size=64)
    assert a.shape == (6, 4) and torch.allclose(a, b, atol=1e-6)  # batch size does not matter
    assert not torch.allclose(a, denoising_loss_by_band(model, config, clean, bands=4, draws=2, seed=4))

    assert (a > 0).all()
    with pytest.raises(Exception, match="bands"):
        denoising_loss_by_band(model, config, clean, bands=0)


def test_x0_clipping_is_a_setting_of_ddpm_and_ddim():
    assert sampling_scheduler(DiffusionConfig(), "ddim", 10).config.clip_sample is True  # diffusers' default
    assert sampling_scheduler(DiffusionConfig(), "ddim", 10, clip_sample=False).config.clip_sample is False
    assert sampling_scheduler(DiffusionConfig(), "ddpm", 10, clip_sample=False).config.clip_sample is False


def test_unclipped_ddim_follows_its_noise_prediction_exactly():
    """Without clipping, DDIM (eta 0) is x_prev = sqrt(a') x0 + sqrt(1 - a') eps with x0 from eps: a network that
    predicts a huge noise makes x0 leave [-1, 1], and only the clipped sampler changes the step."""
    x = torch.zeros(1, 1, 2, 2)
    steps = {}
    for clip in (True, False):
        scheduler = sampling_scheduler(DiffusionConfig(), "ddim", 10, clip_sample=clip)
        t, t_prev = int(scheduler.timesteps[0]), int(scheduler.timesteps[1])
        steps[clip] = scheduler.step(torch.full_like(x, 3.0), t, x, eta=0.0).prev_sample
    a, a_prev = (noise_scheduler(DiffusionConfig()).alphas_cumprod[i].double() for i in (t, t_prev))
    x0 = (0 - (1 - a).sqrt() * 3.0) / a.sqrt()
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * 3.0
    assert torch.allclose(steps[False].double(), expected.expand(1, 1, 2, 2), atol=1e-5)
    assert not torch.allclose(steps[True].double(), expected.expand(1, 1, 2, 2), atol=1e-3)


def test_guided_sampling_drawn_in_parts_equals_at_once_and_follows_the_classes():
    from ddpm_lottery.models.conditioning import Guidance

    config = ModelConfig(preset="tiny", block_out_channels=(16, 16, 16), class_conditional=True, num_classes=3)
    model = build_model(config, 1, seed=0)
    guidance = Guidance(3, scale=2.0)
    kwargs = dict(sampler="ddim", num_steps=3, seed=4, guidance=guidance)
    whole = sample(model, DiffusionConfig(), num_samples=5, batch_size=5, **kwargs)
    parts = [
        sample(model, DiffusionConfig(), num_samples=n, first_index=k, batch_size=2, **kwargs)
        for k, n in ((0, 2), (2, 3))
    ]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-5)
    other = sample(
        model, DiffusionConfig(), num_samples=5, batch_size=5, **{**kwargs, "guidance": Guidance(3, (1,), 2.0)}
    )
    assert torch.allclose(whole[1], other[1], atol=1e-5)  # image 1 is class 1 either way: the same image
    assert not torch.allclose(whole[0], other[0], atol=1e-3)  # image 0: class 0, then class 1
