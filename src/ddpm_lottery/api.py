"""The Python API: the same operations as the CLI, on config objects.

    from ddpm_lottery import RunConfig, SampleConfig, train, sample
    config = RunConfig(); config.train.steps = 200
    run = train(config, "runs/demo")          # a RunResult: levels, sparsities, losses, networks
    sample(run, SampleConfig(sampler="ddim", sampling_steps=50))

``train``, ``find_ticket`` and ``tune_range`` return a :class:`RunResult`, ``evaluate`` an
:class:`EvaluationResult`, ``run_study`` a :class:`StudyResult`.  A RunResult is also the run
folder's path (``os.PathLike``): it goes wherever a path goes.

One concept past 400 lines: the public facade, one thin function per command and the result
classes they return; the work itself lives in the layers below.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from diffusers import DDPMPipeline
from tqdm.auto import tqdm

from ddpm_lottery.config import (
    EvalConfig,
    LotteryConfig,
    RunConfig,
    RuntimeConfig,
    SampleConfig,
    TuneConfig,
    check_config,
    config_hash,
    to_dict,
)
from ddpm_lottery.data.images import from_model_range
from ddpm_lottery.kernels.install import install_kernels, kernel_record
from ddpm_lottery.lottery.commands import run_range_tuning, search_ticket, train_dense
from ddpm_lottery.lottery.export import export_level
from ddpm_lottery.lottery.export import load_pipeline as load
from ddpm_lottery.lottery.networks import level_compact_network, level_network
from ddpm_lottery.lottery.stages import StagedLevel
from ddpm_lottery.measures.evaluate import evaluate_levels, save_samples
from ddpm_lottery.models.conditioning import guidance_folder_suffix, guidance_for, run_classes
from ddpm_lottery.models.diffusion import noise_scheduler, sampling_steps, unclipped
from ddpm_lottery.models.diffusion import sample as run_sampler
from ddpm_lottery.runs.outputs import SampleFolder, StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.study.execute import execute_study
from ddpm_lottery.utils.errors import UserError, require_type
from ddpm_lottery.utils.figures import save_grid
from ddpm_lottery.utils.files import make_dirs, write_json
from ddpm_lottery.utils.launch import resolve_device

# ----------------------------------------------------------------------------------------------
# Result objects


@dataclass(frozen=True)
class LevelResult:
    """One finished level of a run: what it is, what it cost, and its network."""

    run_path: Path
    index: int
    sparsity: float  # of the prunable weights
    channel_sparsity: float | None  # channel tickets
    final_loss: float
    wall_time_s: float
    path: Path

    def network(self, weights: str = "ema"):
        """The level's network (a ``UNet2DModel``, compacted for channel tickets, or a ``DiTTransformer2DModel``),
        on the CPU."""
        return load_network(self.run_path, self.index, weights)

    def pipeline(self, weights: str = "ema"):
        """A ``DDPMPipeline`` of the level's U-Net and the run's noise schedule, in memory (no diffusers pipeline
        fits a pixel-space DiT: sample it with ``ddpm_lottery.sample`` or a scheduler loop)."""
        return DDPMPipeline(
            unet=self.network(weights), scheduler=noise_scheduler(load_run_config(self.run_path).diffusion)
        )


class RunResult(os.PathLike):
    """A run folder and what it holds; usable wherever a path is (``Path`` attributes pass through)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunResult({str(self.path)!r})"

    def __truediv__(self, other):
        return self.path / other

    def __eq__(self, other) -> bool:
        return isinstance(other, (RunResult, Path, str)) and Path(os.fspath(other)) == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __getattr__(self, name):  # name, parent, exists(), glob(), ...: the folder's Path
        return getattr(self.__dict__["path"], name)

    @property
    def run(self) -> Run:
        return Run.open(self.path)

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def config(self):
        return self.run.config

    @property
    def levels(self) -> list[LevelResult]:
        run = self.run
        out = []
        for index in run.finished_levels():
            level = run.level(index)
            metrics = level.metrics()
            out.append(
                LevelResult(
                    self.path,
                    index,
                    metrics["sparsity"],
                    metrics.get("channel_sparsity"),
                    metrics["training"]["final_loss"],
                    metrics["wall_time_s"],
                    level.dir,
                )
            )
        return out

    @property
    def sparsities(self) -> list[float]:
        return [level.sparsity for level in self.levels]

    @property
    def losses(self) -> list[float]:
        return [level.final_loss for level in self.levels]

    def level(self, index: int | None = None) -> LevelResult:
        """Level ``index`` (default: the last finished)."""
        levels = {level.index: level for level in self.levels}
        chosen = self.run.pick_level(index).index
        return levels[chosen]

    def network(self, level: int | None = None, weights: str = "ema"):
        return load_network(self.path, level, weights)

    def pipeline(self, level: int | None = None, weights: str = "ema"):
        return self.level(level).pipeline(weights)

    def export(self, out: str | Path, level: int | None = None, weights: str = "ema", log=print) -> Path:
        return export(self.path, out, level, weights, log=log)

    def evaluations(self, level: int | None = None) -> list[dict]:
        """The stored evaluation records of a level (default: the last finished)."""
        return self.run.pick_level(level).evaluations()


class EvaluationResult(list):
    """The records ``evaluate`` measured or read back (a list of dicts), with lookups."""

    def __init__(self, run_path: str | Path, records: list[dict]):
        super().__init__(records)
        self.run_path = Path(run_path)

    def value(self, level: int, measure: str) -> dict:
        """The record of ``measure`` at ``level``: ``value``, ``interval``, ``label`` (how it was measured)."""
        for record in self:
            if record.get("level") == level and record["measure"] == measure:
                return record
        raise KeyError(f"no {measure} record for level {level}")


class StudyResult(dict):
    """What ``run_study`` did: ``plan``, ``costs``, ``deferred``, ``findings`` (as keys), and the study's runs."""

    def __init__(self, path: str | Path, values: dict):
        super().__init__(values)
        self.path = Path(path)

    @property
    def runs(self) -> dict[str, RunResult]:
        folder = self.path / "runs"
        return {p.name: RunResult(p) for p in sorted(folder.iterdir()) if Run.is_run(p)} if folder.is_dir() else {}

    @property
    def findings(self) -> dict | None:
        return self.get("findings")

    @property
    def report(self) -> Path:
        return StudyFolder(self.path).report


_NO_CONFIG = type(None)


def _level_number(level, function: str) -> int | None:
    """A level as the API takes it: a level number, or None for the last finished level."""
    return require_type(level, (int, _NO_CONFIG), f"{function}'s level")


def default_run_dir(config: RunConfig, kind: str = "train") -> Path:
    return Path("runs") / f"{kind}-{config_hash(config)}"


def train(
    config: RunConfig, out: str | Path | None = None, *, resume: bool = False, progress: bool = True, log=print
) -> RunResult:
    """Train a DDPM into a run folder (a run with level 0 only); a finished run is left as it is."""
    require_type(config, RunConfig, "train's config")
    return RunResult(train_dense(config, out, resume=resume, progress=progress, log=log))


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config of a run (a LotteryConfig for ticket searches and controls)."""
    return Run.open(run_dir).config


def load_network(
    run_dir: str | Path,
    level: int | None = None,
    weights: str = "ema",
    kernels: str = "dense",
    compiled: bool = False,
    log=print,
):
    """The network of a run's level (default: the last finished) with its trained weights, on the CPU.

    A channel ticket comes back compacted (EMA weights): the smaller network that computes the same.
    ``kernels="auto"`` or ``"sparse"`` runs an unstructured ticket's surviving weights only (see
    ``--kernels``); the network keeps its diffusers call (a U-Net's ``net(x, t).sample``, a DiT's
    ``net(x, timestep=t, class_labels=y).sample``) and state dict.
    ``compiled=True``: its inference calls go through ``torch.compile`` (see ``--compile-sampling``)."""
    chosen = Run.open(run_dir).pick_level(_level_number(level, "load_network"))
    if weights == "ema" and chosen.channels_path.exists() and chosen.compact_path.exists():
        return level_compact_network(chosen)
    network = level_network(chosen, weights)
    runtime = RuntimeConfig()
    runtime.kernels, runtime.compile_sampling = kernels, compiled
    check_config(runtime)
    install_kernels(network, runtime, log=log, what=chosen.label())
    return network


def sample(
    run_dir: str | Path,
    config: SampleConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    log=print,
) -> Path:
    """Write a PNG grid (and optionally an .npz) of samples from a run, with how they were made."""
    # Checked against the declarations, as the flags are: a config built in code skips them otherwise.
    config = check_config(require_type(config or SampleConfig(), SampleConfig, "sample's config"))
    sampling, num_samples = config.sampling, config.sample.num_samples
    steps = sampling_steps(sampling)
    device = resolve_device(config.runtime.device)
    run_dir = Path(run_dir)
    run = Run.open(run_dir)
    diffusion = run.config.diffusion
    if sampling.schedule:
        if config.sample.level is not None:
            raise UserError("--schedule says which level denoises which timesteps; drop --level")
        level = StagedLevel(run, sampling.schedule)
    else:
        level = run.pick_level(config.sample.level)
    guidance = guidance_for(sampling, run_classes(run.config))
    model = level_network(level, sampling.weights).to(device)
    kernels = install_kernels(model, config.runtime, log=log, what=level.label())
    folder = (
        SampleFolder(Path(out))
        if out is not None
        else level.samples_folder(
            f"{sampling.sampler}-{steps}steps-seed{sampling.sample_seed}-{sampling.weights}"
            f"{'-unclipped' if unclipped(sampling) else ''}{guidance_folder_suffix(guidance)}"
        )
    )
    make_dirs(folder.dir)
    bar = tqdm(total=1, disable=not progress, desc=f"sample {sampling.sampler}", unit="call", leave=True)

    def on_step(done, total):
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    images = run_sampler(
        model,
        diffusion,
        sampler=sampling.sampler,
        num_steps=steps,
        num_samples=num_samples,
        seed=sampling.sample_seed,
        batch_size=sampling.sample_batch_size,
        eta=sampling.eta,
        clip_sample=sampling.clip_sample,
        device=device,
        on_step=on_step,
        guidance=guidance,
    )
    bar.close()
    wall = time.perf_counter() - started
    uint8 = from_model_range(images)
    save_grid(uint8, folder.grid)
    if config.sample.npz:
        save_samples(folder.npz, uint8)
    info = {
        "run": str(run_dir),
        **level.record_fields(),
        "config": to_dict(config),
        "sampler": sampling.sampler,
        "steps": steps,
        "eta": sampling.eta if sampling.sampler == "ddim" else None,
        "clip_sample": not unclipped(sampling) if sampling.sampler != "dpm-solver++" else None,
        "num_samples": num_samples,
        "seed": sampling.sample_seed,
        "weights": sampling.weights,
        **(guidance.protocol() if guidance is not None else {}),
        "wall_time_s": wall,
        "images_per_s": num_samples / wall,
        "device": str(device),
        **kernel_record(model, kernels),
    }
    if hasattr(model, "accounting"):
        info["stages"] = model.accounting()
    write_json(folder.info, info)
    log(
        f"wrote {folder.grid} ({num_samples} samples, {sampling.sampler} {steps} steps, "
        f"seed {sampling.sample_seed}, {sampling.weights} weights, {wall:.1f} s, {info['kernels']})"
    )
    for row in info.get("stages", []):
        log(
            f"  {row['range']}: {row['calls']} denoiser calls, {row['seconds']:.2f} s, "
            f"{row['flops'] / 1e9:.3g} GFLOPs ({row['flops_per_image_call'] / 1e6:.3g} MFLOPs per image and call)"
        )
    return folder.dir


def export(
    run_dir: str | Path,
    out: str | Path,
    level: int | None = None,
    weights: str = "ema",
    log=print,
    force: bool = False,
) -> Path:
    """Write a run level as a diffusers pipeline folder (see :mod:`ddpm_lottery.lottery.export`);
    ``force`` replaces an export of another level already at ``out``."""
    return export_level(run_dir, out, _level_number(level, "export"), weights, log=log, force=force)


def find_ticket(config: LotteryConfig, out: str | Path | None = None, *, progress: bool = True, log=print) -> RunResult:
    """Run a ticket search, or a control branch when --reinit / --strategy random is given."""
    require_type(config, LotteryConfig, "find_ticket's config")
    return RunResult(search_ticket(config, out, progress=progress, log=log))


def tune_range(
    run_dir: str | Path, config: TuneConfig, out: str | Path | None = None, *, progress: bool = True, log=print
) -> RunResult:
    """``ddpm-lottery tune-range``: fine-tune a level on a timestep range, into a run of its own."""
    require_type(config, TuneConfig, "tune_range's config")
    return RunResult(run_range_tuning(run_dir, config, out, progress=progress, log=log))


def evaluate(
    run: str | Path,
    config: EvalConfig | None = None,
    levels: list[int] | None = None,
    *,
    progress: bool = True,
    log=print,
    extractor=None,
    force: bool = False,
) -> EvaluationResult:
    """Measure the given levels (default: the last finished one) with every configured measure.

    A measure already stored with the same protocol is read back, not recomputed, unless ``force``."""
    require_type(config, (EvalConfig, _NO_CONFIG), "evaluate's config")
    for level in require_type(levels, (list, tuple, _NO_CONFIG), "evaluate's levels") or []:
        _level_number(level, "evaluate")
    records = evaluate_levels(run, config, levels, progress=progress, log=log, extractor=extractor, force=force)
    return EvaluationResult(Run.open(run).root, records)


def run_study(
    path: str | Path,
    out: str | Path | None = None,
    *,
    dry_run: bool = False,
    report_only: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    device: str | None = None,
    log=print,
) -> StudyResult:
    """Plan, and unless ``dry_run`` run, the study in ``path``: its runs, findings and report."""
    return StudyResult(
        *execute_study(
            path,
            out,
            dry_run=dry_run,
            report_only=report_only,
            progress=progress,
            data_dir=data_dir,
            device=device,
            log=log,
        )
    )


def load_pipeline(folder: str | Path):
    """A ``DDPMPipeline`` from an export folder (channel tickets come back compacted)."""
    return load(folder)


__all__ = [
    "EvaluationResult",
    "LevelResult",
    "RunConfig",
    "RunResult",
    "SampleConfig",
    "StudyResult",
    "export",
    "load_network",
    "load_pipeline",
    "load_run_config",
    "sample",
    "train",
]
