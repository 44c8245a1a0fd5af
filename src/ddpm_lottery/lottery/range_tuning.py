"""Range fine-tuning: a level trained further on one range of timesteps, for a stage schedule."""

from __future__ import annotations

from pathlib import Path

from ddpm_lottery.config import LotteryConfig
from ddpm_lottery.lottery.levels import LevelTrainer, apply_masks
from ddpm_lottery.lottery.networks import level_channel_masks, level_masks
from ddpm_lottery.lottery.tickets import store_channels
from ddpm_lottery.pruning.masks import save_masks
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, make_dirs


class RangeTuning(LevelTrainer):
    """Fine-tunes one level of a run on the timesteps of ``train.timestep_range`` only.

    The level's masks (and, for channel tickets, its channels and their norms) stay as they are; it
    starts from the level's trained weights or from theta_tau * m, with a fresh optimizer.  The result
    is its own run (kind ``range``) whose level 0 a stage schedule names as ``RUN/level_00``.
    """

    kind = "range"

    def __init__(self, config: LotteryConfig, source: Run, level: int, start: str, out: str | Path, **kwargs):
        self.source, self.source_level, self.start = source, source.level(level).require_finished(), start
        total = config.diffusion.num_train_timesteps
        if config.train.timestep_range[1] > total:
            raise UserError(
                f"--timestep-range ends at {config.train.timestep_range[1]}, beyond the {total} timesteps "
                "of the diffusion process"
            )
        super().__init__(config, out, **kwargs)

    def run_tuning(self) -> Path:
        run = self.open_run(
            {"source": str(self.source.root), "source_level": self.source_level.index, "start": self.start}
        )
        try:
            level = run.level(0)
            if level.finished:
                self.log(f"{run.root} is already finished; nothing to do")
                return self.out
            masks = level_masks(self.source_level)
            channels = level_channel_masks(self.source_level)
            if self.processes.is_main:
                make_dirs(level.dir)
                save_masks(level.mask_path, masks)
                store_channels(level, channels)
            low, high = self.config.train.timestep_range
            trainer = self.trainer_for(level, None, f"timesteps {low}..{high - 1}")
            every = self.tickets.training_masks(trainer.model, level, masks, channels)
            trainer.use_masks(every)
            if trainer.resume():
                self.log(f"resuming at step {trainer.step}")
            else:
                start = (
                    self.source_level.state("raw")
                    if self.start == "trained"
                    else load_tensors(self.source.rewind_path, "rewind weights (theta_tau)")
                )
                trainer.load_weights(apply_masks(start, every))
            self.log(
                f"fine-tuning {self.source_level.label()} on timesteps {low}..{high - 1} from its "
                f"{self.start} weights for {self.config.train.steps} steps"
            )
            self.train_level(
                trainer,
                0,
                masks,
                [],
                "range",
                {
                    "tuned": {
                        "source": str(self.source.root),
                        "source_level": self.source_level.index,
                        "start": self.start,
                        "timesteps": [low, high],
                    }
                },
            )
            self.write_summary()
        finally:
            self.close_run()
        return self.out
