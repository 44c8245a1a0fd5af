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


def synthetic_study(root, searches: dict, *, seeds=(0, 1), notes=None):
    """A study folder as `ddpm-lottery study` leaves it, with made-up measurements instead of trained levels:
    sealed records the findings read, no weights.

    ``searches``: name -> {"sparsities": [0.0, 0.5, ...] (level 0 the dense model), "weights": prunable
    weights, "values": {measure: per seed, a value per level}, and optionally "preset", "conditional",
    "steps"}.  Each record's bootstrap resamples are its value plus the same offsets at every level, so a
    level's paired interval against the dense model is its difference alone: worse where the value is above
    the dense one, not separable where it is equal."""
    from pathlib import Path

    from ddpm_lottery.runs.run import Run
    from ddpm_lottery.utils.files import make_dirs, mark_tree, write_json

    root = Path(root)
    make_dirs(root / "runs")
    mark_tree(root, f"study {root.name}")
    declaration = {
        "name": root.name,
        "runs": {},
        "searches": {name: {"strategy": "unified"} for name in searches},
        "controls": {},
        "data_seeds": list(seeds),
        "control_seed_init": 1,
    }
    write_json(root / "study.json", {"declaration": declaration, "notes": notes or {}})
    offsets = [0.01 * i for i in range(-5, 6)]
    for name, spec in searches.items():
        for seed in seeds:
            config = LotteryConfig()
            config.model.preset = spec.get("preset", "tiny")
            config.model.class_conditional = spec.get("conditional", False)
            config.model.num_classes = 10 if spec.get("conditional") else None
            config.train.steps = spec.get("steps", 2500)
            config.train.seed_data = seed
            run = Run.prepare(root / "runs" / f"{name}-seed{seed}", config, "lottery", {}, log=lambda *_: None)
            weights = spec["weights"]
            for index, sparsity in enumerate(spec["sparsities"]):
                level = run.level(index)
                make_dirs(level.eval_dir)
                for measure, per_seed in spec["values"].items():
                    value = per_seed[seed][index]
                    write_json(
                        level.evaluation_path(f"{measure}-protocol"),
                        {
                            "key": f"{measure}-protocol",
                            "measure": measure,
                            "level": index,
                            "value": value,
                            "interval": [value - 0.05, value + 0.05],
                            "replicates": [value + offset for offset in offsets],
                            "label": f"{measure} protocol",
                        },
                    )
                surviving = round(weights * (1 - sparsity))
                write_json(
                    level.metrics_path,
                    {
                        "level": index,
                        "sparsity": sparsity,
                        "prunable_parameters": weights,
                        "surviving_prunable": surviving,
                        "training": {"final_loss": 0.1, "steps": config.train.steps, "wall_time_s": 1.0},
                        "wall_time_s": 1.0,
                    },
                )
    return root
