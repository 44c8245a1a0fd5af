import pytest
import torch

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.models.families import PRESETS
from ddpm_lottery.models.networks import build_model, count_parameters, network_kwargs
from ddpm_lottery.utils.errors import UserError


def test_ddpm_cifar10_is_exactly_the_paper_network():
    model = build_model(ModelConfig(preset="ddpm-cifar10"))
    assert count_parameters(model) == 35_746_307
    assert model.config.attention_head_dim is None and model.config.freq_shift == 1
    assert model.config.dropout == 0.1 and model.config.in_channels == 3


@pytest.mark.parametrize(
    "preset,low,high", [("tiny", 0.2e6, 0.4e6), ("small", 1.2e6, 2.0e6), ("ddpm-mnist", 3e6, 12e6)]
)
def test_preset_sizes(preset, low, high):
    model = build_model(ModelConfig(preset=preset), 1)
    assert low < count_parameters(model) < high


@pytest.mark.parametrize("preset", ["tiny", "small", "ddpm-mnist"])
def test_forward_shapes(preset):
    model = build_model(ModelConfig(preset=preset), 1)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999])).sample
    assert out.shape == x.shape


def test_seed_gives_identical_weights_and_different_seeds_differ():
    a = build_model(ModelConfig(preset="tiny"), 1, seed=3)
    b = build_model(ModelConfig(preset="tiny"), 1, seed=3)
    c = build_model(ModelConfig(preset="tiny"), 1, seed=4)
    for pa, pb, _pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_seeding_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelConfig(preset="tiny"), 1, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_field_overrides():
    kwargs = network_kwargs(ModelConfig(preset="tiny", block_out_channels=(8, 16, 16), layers_per_block=2), 3)
    assert kwargs["block_out_channels"] == (8, 16, 16) and kwargs["layers_per_block"] == 2
    assert kwargs["in_channels"] == 3 == kwargs["out_channels"]


@pytest.mark.parametrize(
    "config,channels,match",
    [
        (ModelConfig(preset="nope"), 1, "unknown preset"),
        (ModelConfig(preset="ddpm-cifar10"), 1, "3-channel"),
        (ModelConfig(preset="tiny", block_out_channels=(12, 32, 32)), 1, "divisible by norm_num_groups"),
        (ModelConfig(preset="tiny", block_out_channels=(16, 32)), 1, "levels"),
        (ModelConfig(preset="tiny", sample_size=30), 1, "not divisible by 4"),
    ],
)
def test_bad_networks(config, channels, match):
    with pytest.raises(UserError, match=match):
        network_kwargs(config, channels)


def test_all_presets_listed():
    assert set(PRESETS) == {"ddpm-cifar10", "ddpm-mnist", "small", "tiny", "dit-small", "dit-medium", "dit-s2"}
