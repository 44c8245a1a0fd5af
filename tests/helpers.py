"""Settings shared by the tests: a tiny ticket search that trains in seconds."""

from ddpm_lottery.config import LotteryConfig, RunConfig


def tiny_training(config, steps: int, **train):
    """8-channel tiny U-Net, batch 4, on the CPU: trains in well under a second per step."""
    config.model.block_out_channels = (8, 8, 8)
    config.train.steps = steps
    config.train.batch_size = 4
    config.train.checkpoint_every = 4
    config.train.log_every = 2
    config.runtime.device = "cpu"
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def tiny_run_config(steps: int = 6, **train) -> RunConfig:
    return tiny_training(RunConfig(), steps, **train)


def tiny_lottery_config(strategy: str = "unified", steps: int = 10, **prune) -> LotteryConfig:
    """The tiny training, p = 0.5 to 75 % sparsity, rewinding to 20 % of the steps."""
    config = tiny_training(LotteryConfig(), steps)
    config.prune.strategy = strategy
    config.prune.prune_ratio = 0.5
    config.prune.target_sparsity = 0.75
    config.prune.rewind_fraction = 0.2
    config.prune.level_samples = 4
    config.prune.level_sampling_steps = 2
    for key, value in prune.items():
        setattr(config.prune, key, value)
    return config


def kill_search_at(config, out, monkeypatch, level: int, step: int | None = None) -> None:
    """Run a ticket search into ``out`` and kill it right after the checkpoint of ``step`` in ``level``
    (``None``: the level's first checkpoint)."""
    import pytest

    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.training.trainer import Trainer

    original = Trainer.save_checkpoint

    def crash(self):
        original(self)
        if self.level.index == level and step in (None, self.step):
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(Trainer, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        find_ticket(config, out, progress=False, log=lambda *_: None)
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
