"""What a plan costs on this device, and the plan described with its estimated wall time.

Seconds per unit of work are measured here with the study's own networks (a training step, a denoiser
call, the feature network and one resampled distance), each network that the plan trains timed apart.
The levels that the sparse kernels will train (``--kernels sparse``, from ``--sparse-training-from``) are
timed with them, on random masks of their planned sparsity: at up to three sparsities a network, and
interpolated between those in sparsity.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddpm_lottery.config import EvalConfig, LotteryConfig
from ddpm_lottery.kernels.install import install_kernels
from ddpm_lottery.measures.inception import FrechetReference, InceptionFeatures
from ddpm_lottery.models.conditioning import planned_model
from ddpm_lottery.models.diffusion import noise_scheduler, sampling_steps
from ddpm_lottery.models.families import denoise
from ddpm_lottery.models.networks import build_model, input_shape
from ddpm_lottery.pruning.modules import prunable_names
from ddpm_lottery.pruning.strategies import random_masks_at
from ddpm_lottery.study.plan import Plan
from ddpm_lottery.study.spec import Study
from ddpm_lottery.utils.launch import MachineLoad, machine_load, resolve_device
from ddpm_lottery.utils.units import duration


@dataclass
class DeviceCosts:
    """Seconds per unit of work, measured on this device with the study's own network."""

    device: str
    threads: int
    train_step_s: float
    batch_size: int
    call_per_image_s: float  # one denoiser call on one image, at the sampling batch size
    inception_per_image_s: float | None
    frechet_s: dict  # measure -> seconds of one Fréchet distance at the study's N
    # the search that trains each further network -> (training step s, denoiser s per image and call)
    networks: dict = field(default_factory=dict)
    # the 1-minute load average and core count before timing: other work on the cores inflates every second
    # measured here, and so the estimate (a CPU shared by two PyTorch processes runs each 5 to 40 times slower)
    load: float | None = None
    cores: int | None = None
    # the search that trains each network -> [(sparsity, training step s with the sparse kernels)], rising
    sparse_steps: dict = field(default_factory=dict)
    # why the sparse levels were timed with the dense kernels (no sparse kernels on this device), or None
    sparse_unavailable: str | None = None

    @property
    def busy(self) -> bool:
        """Whether other work held the cores these threads needed while the costs were timed."""
        return self.device.startswith("cpu") and MachineLoad(self.load, self.cores).busy(self.threads)

    def per_network(self, plan: Plan) -> list[tuple[dict, float, float]]:
        """(work left, step s, call s) for each network the plan trains; the first network's costs where
        one was not timed apart."""
        work = plan.network_work or {
            "": {"train_steps": plan.train_steps, "sampled_images": plan.sampled_images, "loss_calls": plan.loss_calls}
        }
        return [(left, *self.network_costs(owner)) for owner, left in work.items()]

    def network_costs(self, owner: str) -> tuple[float, float]:
        """(training step s, denoiser s per image and call) of the network that search ``owner`` trains."""
        return self.networks.get(owner, (self.train_step_s, self.call_per_image_s))

    def sparse_step(self, owner: str, sparsity: float) -> float:
        """Seconds of a training step with the sparse kernels at ``sparsity``: linear in the sparsity between
        the timed ones, the nearest timed one outside them; the dense step where none was timed."""
        timed = self.sparse_steps.get(owner)
        if not timed:
            return self.network_costs(owner)[0]
        if sparsity <= timed[0][0]:
            return timed[0][1]
        for (s0, t0), (s1, t1) in itertools.pairwise(timed):
            if sparsity <= s1:
                return t0 + (t1 - t0) * (sparsity - s0) / (s1 - s0)
        return timed[-1][1]

    def training_seconds(self, plan: Plan) -> float:
        """The training left: dense-kernel steps at the dense step's cost, sparse-kernel steps at theirs."""
        owners = list(plan.network_work) or [""]
        total = 0.0
        for (left, step, _), owner in zip(self.per_network(plan), owners):
            sparse = plan.sparse_work.get(owner, {})
            total += (left["train_steps"] - sum(sparse.values())) * step
            total += sum(steps * self.sparse_step(owner, s) for s, steps in sparse.items())
        return total

    def estimate(self, plan: Plan, config: EvalConfig) -> dict[str, float]:
        networks = self.per_network(plan)
        steps = sampling_steps(config.sampling)
        parts = {
            "training": self.training_seconds(plan),
            "sampling": sum(left["sampled_images"] * steps * call for left, _, call in networks),
            "Inception features": plan.inception_images * (self.inception_per_image_s or 0.0),
            "held-out loss": sum(left["loss_calls"] * call for left, _, call in networks),
            "intervals": sum(count * self.frechet_s.get(m, 0.0) for m, count in plan.resamples.items()),
        }
        parts["total"] = sum(parts.values())
        return parts


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def measure_costs(study: Study, *, probe_batch: int = 16, plan: Plan | None = None) -> DeviceCosts:
    """Time a training step, a denoiser call, the feature network and one resampled distance here; with a
    ``plan``, also the step of the levels that the sparse kernels will train.

    The training step is timed at ``min(batch, probe_batch)`` and scaled linearly to the batch, so a
    dry run of a paper-scale study on a CPU takes seconds, not the minutes of one real step.
    """
    machine = machine_load()  # before this timing adds its own
    owners = sorted(set(study.dense_sources().values()), key=list(study.searches).index)
    first = study.search_config(owners[0], study.settings.data_seeds[0])
    device = resolve_device(study.evaluation.runtime.device if first.runtime.device == "auto" else first.runtime.device)
    channels, side = input_shape(first)
    step_s, call_s = _network_costs(study, first, device, probe_batch)
    networks = {
        owner: _network_costs(study, study.search_config(owner, study.settings.data_seeds[0]), device, probe_batch)
        for owner in owners[1:]
    }
    sparse_steps, sparse_unavailable = {}, None
    for owner, work in (plan.sparse_work if plan else {}).items():
        config = study.search_config(owner, study.settings.data_seeds[0])
        timed, sparse_unavailable = _sparse_step_costs(config, device, _probe_sparsities(work), probe_batch)
        if timed:
            sparse_steps[owner] = timed
    inception_s = None
    measures = study.evaluation.measures
    frechet = {}
    if "inception" in measures:
        extractor = InceptionFeatures(study.evaluation.feature_network, device=device)
        images = torch.zeros(16, channels, side, side, dtype=torch.uint8)
        inception_s = _timed(lambda: extractor(images), 1) / len(images)
    generator = torch.Generator().manual_seed(0)
    n = study.evaluation.num_samples
    for measure, dim in (("inception", 2048), ("domain", 64)):
        if measure in measures:
            reference = FrechetReference(torch.randn(min(n, 4096), dim, generator=generator, dtype=torch.float64))
            fake = torch.randn(n, dim, generator=generator, dtype=torch.float64)
            frechet[measure] = _timed(lambda: reference.distance(fake), 1)
    return DeviceCosts(
        str(device),
        torch.get_num_threads(),
        step_s,
        first.train.batch_size,
        call_s,
        inception_s,
        frechet,
        networks,
        load=machine.load,
        cores=machine.cores,
        sparse_steps=sparse_steps,
        sparse_unavailable=sparse_unavailable,
    )


def _training_step(config: LotteryConfig, device, probe_batch: int, model=None) -> float:
    """Seconds of one training step of ``model`` (else the config's dense network) at the config's batch."""
    channels, side = input_shape(config)
    model = model if model is not None else build_model(planned_model(config), channels, image_size=side).to(device)
    scheduler = noise_scheduler(config.diffusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def timed_at(batch: int) -> float:
        x = torch.randn(batch, channels, side, side, device=device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)

        def step():
            loss = (denoise(model, x, t) - x).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return _timed(step, 2)

    batch = min(config.train.batch_size, probe_batch)
    step_s = timed_at(batch) * config.train.batch_size / batch
    if step_s < 3 and batch < config.train.batch_size:
        # small networks run small batches inefficiently: time the real batch when it is cheap to
        step_s = timed_at(config.train.batch_size)
    return step_s


def _network_costs(study: Study, first: LotteryConfig, device, probe_batch: int) -> tuple[float, float]:
    """One network's training step (s) and denoiser call (s per image) on ``device``."""
    channels, side = input_shape(first)
    model = build_model(planned_model(first), channels, image_size=side).to(device)
    step_s = _training_step(first, device, probe_batch, model)
    sample_batch = min(study.evaluation.sample_batch_size, study.evaluation.num_samples, 64)
    xs = torch.randn(sample_batch, channels, side, side, device=device)
    ts = torch.full((sample_batch,), 500, device=device, dtype=torch.long)
    with torch.no_grad():
        call_s = _timed(lambda: denoise(model, xs, ts), 2) / sample_batch
    return step_s, call_s


def _probe_sparsities(work: dict[float, int]) -> list[float]:
    """The planned sparse levels' sparsities to time: all of up to three, else the least, middle and most."""
    planned = sorted(work)
    return planned if len(planned) <= 3 else [planned[0], planned[len(planned) // 2], planned[-1]]


def _sparse_step_costs(
    config: LotteryConfig, device, sparsities: list[float], probe_batch: int
) -> tuple[list[tuple[float, float]], str | None]:
    """[(sparsity, training step s)] with the sparse kernels, on random masks of each sparsity over the
    run's prunable weights (every tensor at the same density, as ``unified`` prunes), or ([], why not)."""
    channels, side = input_shape(config)
    pc = config.prune
    timed = []
    for sparsity in sparsities:
        model = build_model(planned_model(config), channels, image_size=side).to(device)
        parameters = dict(model.named_parameters())
        names = prunable_names(model, pc.include, pc.exclude, pc.layer_groups)
        masks = random_masks_at({name: parameters[name].shape for name in names}, 1 - sparsity, seed=0)
        with torch.no_grad():
            for name, keep in masks.items():
                masks[name] = keep.to(parameters[name].device)
                parameters[name].mul_(masks[name])
        runtime = copy.copy(config.runtime)
        runtime.kernels = "sparse"
        report = install_kernels(model, runtime, log=lambda _line: None, training=True, masks=masks)
        if report.unavailable:
            return [], report.unavailable
        timed.append((sparsity, _training_step(config, device, probe_batch, model)))
    return timed, None


def describe_plan(study: Study, plan: Plan, out: Path, costs: DeviceCosts | None) -> str:
    config = study.evaluation
    searches = sum(1 for r in plan.runs if r.control is None)
    lines = [
        f"study {study.settings.name!r} ({study.path}) into {out}",
        f"runs: {len(plan.runs)} ({searches} searches, {len(plan.runs) - searches} controls) over data seeds "
        f"{', '.join(map(str, study.settings.data_seeds))}",
        f"levels: {plan.levels_total} planned, {plan.levels_done} finished; training steps to go: {plan.train_steps:,}",
        f"evaluations: {plan.evaluations_total} planned ({', '.join(config.measures)} per level"
        + (
            f"; inception on data seeds {', '.join(map(str, study.settings.inception_seeds))} only"
            if study.settings.inception_seeds and "inception" in config.measures
            else ""
        )
        + "), "
        f"{plan.evaluations_done} stored; images to sample: {plan.sampled_images:,} "
        f"({config.sampler} {sampling_steps(config.sampling)} steps, N={config.num_samples} per level)"
        + (f"; Inception images: {plan.inception_images:,}" if "inception" in config.measures else ""),
        f"CKA: {plan.cka_total} ticket pairs × levels planned, {plan.cka_done} stored",
    ]
    for run in plan.runs:
        kind = (
            f"control {run.control} of {run.source}"
            if run.control
            else (
                f"{run.config.prune.strategy}"
                + (f" --order {run.config.prune.order}" if run.config.prune.strategy == "varying" else "")
                + (f", dense model from {run.source}" if run.source else ", trains the dense model")
            )
        )
        lines.append(f"  {run.name:<28} {kind}; levels {','.join(map(str, run.levels))}")
    if costs is not None:
        parts = costs.estimate(plan, config)
        lines.append(
            f"measured on {costs.device} ({costs.threads} threads): training step {costs.train_step_s:.3g} s at batch "
            f"{costs.batch_size}, denoiser {1e3 * costs.call_per_image_s:.3g} ms per image and call"
            + (f", Inception {1 / costs.inception_per_image_s:.3g} images/s" if costs.inception_per_image_s else "")
            + "".join(f", one {m} resample {s:.3g} s" for m, s in costs.frechet_s.items())
            + "".join(
                f"; {owner}'s network: training step {step:.3g} s, denoiser {1e3 * call:.3g} ms"
                for owner, (step, call) in costs.networks.items()
            )
        )
        for owner, timed in costs.sparse_steps.items():
            steps = sum(plan.sparse_work.get(owner, {}).values())
            lines.append(
                f"{steps:,} of the training steps train with the sparse kernels"
                + (f" ({owner}'s network)" if len(costs.networks) else "")
                + ": a step "
                + ", ".join(f"{step:.3g} s at {sparsity:.4g} sparse" for sparsity, step in timed)
                + " (random masks of that sparsity; between those, interpolated)"
            )
        if costs.sparse_unavailable and plan.sparse_work:
            lines.append(
                f"the levels planned for the sparse kernels are counted at the dense step: {costs.sparse_unavailable}"
            )
        if costs.busy:
            lines.append(
                f"the machine was busy while timing ({MachineLoad(costs.load, costs.cores).describe(costs.threads)}): "
                "these seconds and the estimate are too high; run --dry-run again "
                "when the machine is idle"
            )
        if plan.complete:
            lines.append("estimated wall time: none, every planned level, evaluation and CKA pair is stored")
            return "\n".join(lines)
        lines.append(
            "estimated wall time: "
            + duration(parts["total"])
            + " ("
            + ", ".join(f"{name} {duration(value)}" for name, value in parts.items() if name != "total" and value > 0)
            + ") "
            f"in one process on {costs.threads} thread{'s' * (costs.threads != 1)}; processes started side by side "
            "on other cores share it"
        )
    return "\n".join(lines)


__all__ = ["DeviceCosts", "describe_plan", "measure_costs"]
