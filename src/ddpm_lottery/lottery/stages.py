"""Stage schedules: different levels (networks) for different timestep ranges of the reverse process.

The paper's first open question: a denser network for the noisy early steps and a sparser ticket
for the late ones.  A schedule maps ranges of timesteps to levels::

    1000:600=level_00,600:0=level_04

``HIGH:LOW=LEVEL`` covers the timesteps t with LOW <= t < HIGH (the first range starts at the
number of training timesteps, the last ends at 0, and the ranges meet without gaps or overlaps).
LEVEL is ``level_NN`` (or ``NN``) of the run being sampled, or a path to a level folder of another
run of the same network and diffusion.  A channel ticket runs as its compacted network.

A :class:`StagedDenoiser` behaves like its networks (a ``UNet2DModel``, a ``DiTTransformer2DModel``) for every sampler (DDPM, DDIM,
DPM-Solver++): each call goes to the network of its timestep's range (a batch of mixed timesteps,
as the held-out loss uses, is split by range), and it counts calls and seconds per range.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

from ddpm_lottery.lottery.networks import level_compact_network, level_network
from ddpm_lottery.models.families import denoise, family_of
from ddpm_lottery.pruning.costs import layer_flops
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError

_PART = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*=\s*(\S+)\s*$")
_LEVEL = re.compile(r"^(?:level_)?(\d+)$")


@dataclass(frozen=True)
class Stage:
    high: int  # exclusive
    low: int  # inclusive
    level: str  # as written: level_NN, NN, or a path to a level folder

    @property
    def text(self) -> str:
        return f"{self.high}:{self.low}={self.level}"

    def covers(self, t: int) -> bool:
        return self.low <= t < self.high


def parse_schedule(text: str, num_train_timesteps: int = 1000) -> list[Stage]:
    """The stages of ``text``, from the noisiest range down; one-line errors name the faulty range."""
    parts = [p for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise UserError("--schedule is empty; give ranges like 1000:600=level_00,600:0=level_04")
    stages = []
    for part in parts:
        match = _PART.match(part)
        if not match:
            raise UserError(f"--schedule range {part.strip()!r} is not HIGH:LOW=LEVEL (e.g. 600:0=level_04)")
        high, low, level = int(match.group(1)), int(match.group(2)), match.group(3)
        if high == low:
            raise UserError(
                f"--schedule range {part.strip()!r} is empty: it starts and ends at timestep {high}; "
                "give each range a width, e.g. 600:0=level_04"
            )
        if high < low:
            raise UserError(
                f"--schedule range {part.strip()!r} runs upwards: write the higher timestep first ({high}:{low} → {low}:{high})"
            )
        stages.append(Stage(high, low, level))
    stages.sort(key=lambda s: -s.high)
    if stages[0].high != num_train_timesteps:
        raise UserError(
            f"--schedule starts at {stages[0].high}, but the reverse process starts at timestep "
            f"{num_train_timesteps}: the first range must be {num_train_timesteps}:..."
        )
    if stages[-1].low != 0:
        raise UserError(f"--schedule ends at {stages[-1].low}; the last range must reach 0 (e.g. {stages[-1].high}:0)")
    for upper, lower in itertools.pairwise(stages):
        if upper.low > lower.high:
            raise UserError(
                f"--schedule has a gap: no level covers timesteps {lower.high}..{upper.low - 1} "
                f"(between {upper.text} and {lower.text})"
            )
        if upper.low < lower.high:
            raise UserError(
                f"--schedule ranges {upper.text} and {lower.text} overlap on timesteps {upper.low}..{lower.high - 1}"
            )
    return stages


def normal_schedule_text(text: str) -> str:
    """The schedule as written, without spaces and with its ranges from the noisiest down (for keys)."""
    parts = ["".join(p.split()) for p in text.split(",") if p.strip()]
    return ",".join(sorted(parts, key=lambda p: -int(p.split(":")[0]) if p.split(":")[0].isdigit() else 0))


def schedule_slug(stages: list[Stage]) -> str:
    """A folder name for a schedule (its evaluations live in RUN/schedules/<slug>)."""

    def short(level: str) -> str:
        match = _LEVEL.match(level)
        return f"L{int(match.group(1))}" if match else re.sub(r"[^A-Za-z0-9]+", "-", level).strip("-")[-40:]

    return "_".join(f"{s.high}-{s.low}-{short(s.level)}" for s in stages)


def resolve_level(run: Run, reference: str) -> Level:
    """The level a stage names: of ``run`` (level_NN / NN), or of another run (a level folder path)."""
    match = _LEVEL.match(reference)
    if match:
        index = int(match.group(1))
        if index not in run.finished_levels():
            raise UserError(
                f"--schedule names level {index}, which {run.root} has not finished (finished: "
                f"{', '.join(map(str, run.finished_levels())) or 'none'})"
            )
        return run.level(index)
    path = Path(reference)
    match = _LEVEL.match(path.name)
    if not match or not Run.is_run(path.parent):
        raise UserError(
            f"--schedule level {reference!r} is neither level_NN of the run nor a level folder of "
            "another run (RUN/level_NN)"
        )
    other = Run.open(path.parent)
    if other.config.diffusion != run.config.diffusion:
        raise UserError(
            f"--schedule level {reference} comes from a run with another diffusion process; "
            "only networks of the same forward process can share a reverse process"
        )
    mine, theirs = run.network_config(), other.network_config()
    differences = [
        f"{key}={theirs.get(key)!r} there, {mine.get(key)!r} here"
        for key in sorted(set(mine) | set(theirs))
        if not key.startswith("_") and mine.get(key) != theirs.get(key)
    ]
    if differences:
        raise UserError(
            f"--schedule level {reference} comes from a run of another network ({'; '.join(differences[:3])}"
            + (f"; {len(differences) - 3} more" if len(differences) > 3 else "")
            + "); a schedule's levels must share one architecture, so name levels of runs with the same model settings"
        )
    return resolve_level(other, match.group(1))


def stage_network(level: Level, weights: str = "ema", compact: bool = True) -> torch.nn.Module:
    """A level's network for sampling: the compacted one for channel tickets (same outputs, fewer FLOPs)."""
    if compact and weights == "ema" and level.compact_path.exists():
        return level_compact_network(level)
    return level_network(level, weights)


@dataclass
class StageStats:
    calls: int = 0
    images: int = 0
    seconds: float = 0.0


class StagedDenoiser(torch.nn.Module):
    """One denoiser made of several networks, each answering for its range of timesteps."""

    def __init__(self, stages: list[Stage], networks: list[torch.nn.Module]):
        super().__init__()
        shapes = {(n.config.in_channels, n.config.out_channels, str(n.config.sample_size)) for n in networks}
        if len(shapes) != 1:
            raise UserError(
                "--schedule mixes networks of different image shapes or channels; every level must "
                "come from runs of the same data"
            )
        self.stages = stages
        self.networks = torch.nn.ModuleList(networks)
        self.config = networks[0].config
        self.family = family_of(networks[0])  # how a caller calls this denoiser: as its networks are called
        self.stats = [StageStats() for _ in stages]

    def _stage(self, t: int) -> int:
        for i, stage in enumerate(self.stages):
            if stage.covers(t):
                return i
        raise UserError(f"timestep {t} is outside every --schedule range")

    def _timed(self, index: int, sample, timestep, labels):
        started = time.perf_counter()
        out = denoise(self.networks[index], sample, timestep, labels)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        stats = self.stats[index]
        stats.calls += 1
        stats.images += len(sample)
        stats.seconds += time.perf_counter() - started
        return out

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None):
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(len(sample))
        which = torch.tensor([self._stage(int(v)) for v in t.tolist()], device=sample.device)
        first = int(which[0])
        if bool((which == first).all()):
            return UNet2DOutput(sample=self._timed(first, sample, t, class_labels))
        out = torch.empty_like(sample)
        for index in which.unique().tolist():
            rows = torch.nonzero(which == index).view(-1)
            labels = class_labels[rows] if class_labels is not None else None
            out[rows] = self._timed(int(index), sample[rows], t[rows], labels)
        return UNet2DOutput(sample=out)

    def accounting(self) -> list[dict]:
        """Per range: denoiser calls, images through them, measured seconds, FLOPs per image and call."""
        per_call = {}
        for index, net in enumerate(self.networks):
            per_call[index] = per_call.get(index) or layer_flops(net)[0]
        return [
            {
                "range": s.text,
                "calls": st.calls,
                "images": st.images,
                "seconds": st.seconds,
                "flops_per_image_call": per_call[i],
                "flops": per_call[i] * st.images,
            }
            for i, (s, st) in enumerate(zip(self.stages, self.stats))
        ]


class StagedLevel(Level):
    """A schedule of one run, stored and measured like a level (RUN/schedules/<slug>)."""

    def __init__(self, run: Run, schedule: str):
        super().__init__(run, -1)
        stages = parse_schedule(schedule, run.config.diffusion.num_train_timesteps)
        # Level is frozen (a value naming a folder); so is a schedule
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "levels", [resolve_level(run, s.level) for s in stages])
        object.__setattr__(self, "schedule", ",".join(s.text for s in stages))

    def record_fields(self) -> dict:
        return {"level": None, "schedule": self.schedule}

    @property
    def dir(self) -> Path:
        return self.run.schedule_dir(schedule_slug(self.stages))

    @property
    def finished(self) -> bool:
        return True

    def require_finished(self) -> StagedLevel:
        return self

    def label(self) -> str:
        return f"{self.run.root} schedule {self.schedule}"

    def network(self, which: str = "ema") -> StagedDenoiser:
        return StagedDenoiser(self.stages, [stage_network(level, which) for level in self.levels]).eval()

    def metrics(self) -> dict:
        return {"schedule": self.schedule, "levels": [str(level.dir) for level in self.levels]}


def calls_per_stage(stages: list[Stage], timesteps: list[int]) -> list[int]:
    """How many of a sampler's denoiser calls fall in each range."""
    return [sum(1 for t in timesteps if s.covers(int(t))) for s in stages]


__all__ = [
    "Stage",
    "StagedDenoiser",
    "StagedLevel",
    "calls_per_stage",
    "parse_schedule",
    "resolve_level",
    "schedule_slug",
    "stage_network",
]
