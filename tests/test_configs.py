"""The paper-scale recipes, shipped studies in study/shipped/: each loads, by name too, and runs a few steps on tiny
files of its format."""

import argparse
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ddpm_lottery.api import find_ticket
from ddpm_lottery.config import EvalConfig, LotteryConfig, add_arguments, config_from_args
from ddpm_lottery.study.spec import SHIPPED, resolve_study

CONFIGS = SHIPPED


def load(cls, path, argv=()):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls())
    return config_from_args(cls, parser.parse_args(list(argv)), str(path))


def write_idx(folder: Path, count: int, prefix: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">II", 0x801, count) + bytes(i % 10 for i in range(count)))


def write_cifar(root: Path, hundred: bool, count: int = 16) -> None:
    rng = np.random.default_rng(0)
    if hundred:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"fine_labels": [1] * count}
        (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": [i] * count}
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))


def test_every_recipe_loads_with_the_paper_settings():
    names = sorted(p.name for p in CONFIGS.glob("*.toml"))
    recipes = ["cpu-fashion-mnist.toml", "ddpm-cifar10.toml", "ddpm-cifar100.toml", "ddpm-mnist.toml"]
    assert set(recipes) <= set(names)
    assert [resolve_study(Path(r).stem) for r in recipes] == [CONFIGS / r for r in recipes]  # `study ddpm-cifar10`
    cifar = load(LotteryConfig, CONFIGS / "ddpm-cifar10.toml")
    assert (cifar.model.preset, cifar.train.lr, cifar.train.batch_size, cifar.train.ema_decay) == (
        "ddpm-cifar10",
        2e-4,
        128,
        0.9999,
    )
    assert (
        cifar.prune.prune_ratio,
        cifar.prune.ratio_increment,
        cifar.prune.max_rounds,
        cifar.prune.rewind_fraction,
    ) == (0.2, 0.01, 25, 0.05)
    assert load(EvalConfig, CONFIGS / "ddpm-cifar10.toml").num_samples == 50000


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["ddpm-cifar10.toml", "ddpm-cifar100.toml", "ddpm-mnist.toml", "cpu-fashion-mnist.toml"]
)
def test_recipe_runs_a_few_steps(tmp_path, name):
    data = tmp_path / "data"
    if "cifar100" in name:
        write_cifar(data, hundred=True)
    elif "cifar10" in name:
        write_cifar(data, hundred=False)
    else:
        write_idx(data, 16)
    few = [
        "--data-dir",
        str(data),
        "--steps-per-level",
        "2",
        "--batch-size",
        "4",
        "--max-rounds",
        "1",
        "--target-sparsity",
        "0.2",
        "--level-samples",
        "2",
        "--level-sampling-steps",
        "2",
        "--device",
        "cpu",
        "--checkpoint-every",
        "2",
    ]
    config = load(LotteryConfig, CONFIGS / name, few)
    run = find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None)
    metrics = (run / "level_01" / "metrics.json").read_text()
    assert '"sparsity": 0.2' in metrics
