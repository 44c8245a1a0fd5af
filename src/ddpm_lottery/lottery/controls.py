"""The controls: what makes a claim about *winning* tickets testable.

A control is a run of its own under its ticket run's ``branches/``, mirroring chosen levels of the
finished search: the same masks with freshly drawn initial weights (``reinit``), random masks with the
same per-tensor sparsities rewound to the same theta_tau (``random``), or channel tickets refilled
from the unstructured masks (``refill``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ddpm_lottery.config import LotteryConfig, non_default
from ddpm_lottery.lottery.search import Lottery, rewind_step
from ddpm_lottery.lottery.tickets import store_channels
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.pruning.masks import save_masks
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import load_tensors, make_dirs


@dataclass(frozen=True)
class Control:
    """A control branch: what makes a claim about *winning* tickets testable."""

    name: str
    description: str


CONTROLS: dict[str, Control] = {
    c.name: c
    for c in (
        Control("reinit", "the masks of --control-of with freshly drawn initial weights (--seed-init)"),
        Control(
            "random",
            "random masks with the per-tensor sparsities of --control-of's levels, rewound to its "
            "theta_tau (--seed-init seeds the masks)",
        ),
        Control(
            "refill",
            "channel tickets refilled from --control-of's unstructured masks (the channels holding the "
            "most surviving weights), rewound to its theta_tau",
        ),
    )
}


def control_kind(config: LotteryConfig) -> str | None:
    if config.prune.refill:
        return "refill"
    if config.prune.reinit:
        return "reinit"
    if config.prune.strategy == "random":
        return "random"
    return None


_CONTROL_FIELDS = {
    "prune.reinit",
    "prune.refill",
    "prune.strategy",
    "prune.levels",
    "prune.control_of",
    "prune.channel_scope",
    "train.seed_init",
}


def control_config(config: LotteryConfig, source: Run) -> LotteryConfig:
    """A control's config: the ticket run's own, with only the control's fields changed."""
    if source.kind != "lottery":
        raise UserError(f"--control-of {source.root} is a {source.kind} run, not a ticket search")
    source_config = source.config
    source_values = non_default(source_config)
    for key, value in non_default(config).items():
        if key not in _CONTROL_FIELDS and source_values.get(key) != value:
            raise UserError(
                f"a control takes its settings from {source.root}; drop --{key.split('.')[-1].replace('_', '-')}"
            )
    branch = copy.deepcopy(source_config)
    branch.prune.reinit = config.prune.reinit
    if config.prune.refill:
        if source_config.prune.structure != "weight":
            raise UserError(
                f"--refill starts from unstructured tickets, and {source.root} is a "
                f"{source_config.prune.structure} search"
            )
        branch.prune.refill, branch.prune.structure = True, "channel"
        branch.prune.channel_scope = config.prune.channel_scope
    branch.prune.strategy = "random" if config.prune.strategy == "random" else source_config.prune.strategy
    branch.prune.levels = config.prune.levels
    branch.prune.control_of = str(source.root)
    branch.prune.dense_from = None
    branch.train.seed_init = config.train.seed_init
    branch.runtime.device = config.runtime.device
    return branch


class ControlBranch(Lottery):
    """Mirrors chosen levels of a finished ticket run with re-drawn weights or random masks."""

    def __init__(self, config: LotteryConfig, source: Run, out: str | Path, **kwargs):
        self.source = source
        self.control = control_kind(config)
        self.kind = f"control-{self.control}"
        super().__init__(config, out, **kwargs)
        self.tau = rewind_step(source.config)

    def run_search(self) -> Path:
        available = [i for i in self.source.finished_levels() if i > 0]
        levels = list(self.config.prune.levels) or available
        for index in levels:
            if index not in available:
                raise UserError(
                    f"{self.source.root} has no finished level {index} (finished: "
                    f"{', '.join(map(str, available)) or 'none'}); pick from those"
                )
        run = self.open_run()
        try:
            for index in levels:
                level = run.level(index)
                if level.finished:
                    continue
                masks, channels = self.tickets.control_masks(
                    self.control, self.source.level(index), self.config.train.seed_init
                )
                if self.control == "reinit":
                    # freshly drawn with this config's --seed-init
                    start = build_model(
                        self.config.model,
                        self.images.images.shape[1],
                        seed=self.config.train.seed_init,
                        image_size=self.images.images.shape[-1],
                        initial="random",
                    ).state_dict()
                else:
                    start = load_tensors(self.source.rewind_path, "rewind weights (theta_tau)")
                if self.processes.is_main:
                    make_dirs(level.dir)
                    save_masks(level.mask_path, masks)
                    store_channels(level, channels)
                extra = {"control": self.control, "source": str(self.source.root), "source_level": index}
                self.train_masked(index, masks, [], start, f"{self.control} control", extra)
            self.write_summary()
        finally:
            self.close_run()
        return self.out
