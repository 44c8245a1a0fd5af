"""The plan: what is left to do of a study in its folder.

Every planned level, evaluation and CKA pair is counted, and what the folder already stores is counted
done; the work left (training steps, images to sample, held-out loss calls, resamples) is kept per network,
so the estimate can time each network apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ddpm_lottery.config import EvalConfig
from ddpm_lottery.lottery.search import planned_sparsities
from ddpm_lottery.measures.evaluate import sampling_key, sampling_protocol
from ddpm_lottery.measures.protocol import for_run
from ddpm_lottery.models.conditioning import run_classes
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.study.spec import PlannedRun, Study


@dataclass
class Plan:
    runs: list[PlannedRun]
    train_steps: int  # left to train
    levels_total: int
    levels_done: int
    evaluations_total: int
    evaluations_done: int
    sampled_images: int  # left to generate
    inception_images: int
    resamples: dict  # measure -> Fréchet/loss resamples left
    loss_calls: int  # denoiser calls of the held-out loss left
    cka_total: int
    cka_done: int
    # the work left per network (the search that trains it -> train_steps, sampled_images, loss_calls): a
    # width study's wider network costs more per step, so the estimate times each network apart
    network_work: dict = field(default_factory=dict)
    # of those steps, the ones the sparse kernels will train (the network -> {planned sparsity: steps}):
    # levels at least --sparse-training-from sparse of a run with --kernels sparse (a rule of the mask)
    sparse_work: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every planned level, evaluation and CKA pair is stored."""
        return (
            self.levels_done == self.levels_total
            and self.evaluations_done == self.evaluations_total
            and self.cka_done == self.cka_total
        )


def _sparse_sparsity(study: Study, run: PlannedRun, index: int, planned: dict) -> float | None:
    """The planned sparsity of level ``index`` if the run trains it with the sparse kernels, else None."""
    runtime = run.config.runtime
    if index == 0 or runtime.kernels != "sparse":
        return None
    if run.search not in planned:  # a control trains its search's masks: the search's levels, once per search
        planned[run.search] = planned_sparsities(study.search_config(run.search, run.seed)) or []
    sparsities = planned[run.search]
    if index > len(sparsities) or sparsities[index - 1] < runtime.sparse_training_from:
        return None
    return round(sparsities[index - 1], 4)


def _level_steps(run: PlannedRun, index: int) -> int:
    steps = run.config.train.steps
    if index == 0:
        return steps if run.source is None and run.control is None else 0
    return steps - round(run.config.prune.rewind_fraction * steps)


def _record_matches(record: dict, measure: str, config: EvalConfig, num_classes: int | None) -> bool:
    """Planning only: does a stored record look like this protocol's (the run itself checks exactly)."""
    spec = record.get("protocol", {})
    if record.get("measure") != measure or spec.get("bootstrap_rounds") != config.bootstrap_rounds:
        return False
    if measure == "loss":
        return (spec.get("bands"), spec.get("heldout", {}).get("split")) == (config.loss_bands, config.heldout_split)
    return (
        spec.get("sampling") == sampling_protocol(for_run(config, num_classes), num_classes)
        and spec.get("reference", {}).get("split") == config.reference_split
    )


def make_plan(study: Study, out: Path) -> Plan:
    runs = study.runs(out)
    config = study.evaluation
    measures = list(config.measures)
    train_steps = levels_total = levels_done = evaluations_total = evaluations_done = 0
    sampled = inception = loss_calls = 0
    resamples = {m: 0 for m in measures}
    heldout = config.heldout_images
    owners = study.dense_sources()
    work: dict[str, dict[str, int]] = {}
    sparse_work: dict[str, dict[float, int]] = {}
    planned_levels: dict[str, list[float]] = {}
    for planned in runs:
        before = (train_steps, sampled, loss_calls)
        path = StudyFolder(out).run_path(planned.name)
        run = Run.open(path) if Run.is_run(path) else None
        finished = set(run.finished_levels()) if run else set()
        # a started run's config holds its class count (taken from the data); only its stored levels are compared
        classes = run_classes(run.config) if run else None
        samples_name = sampling_key(sampling_protocol(for_run(config, classes), classes)) if run else ""
        for index in planned.levels:
            levels_total += 1
            if index in finished:
                levels_done += 1
            else:
                train_steps += _level_steps(planned, index)
                sparsity = _sparse_sparsity(study, planned, index, planned_levels)
                if sparsity is not None:
                    steps = sparse_work.setdefault(owners[planned.search], {})
                    steps[sparsity] = steps.get(sparsity, 0) + _level_steps(planned, index)
            if index not in planned.measured_levels:
                continue
            stored = run.level(index).evaluations() if index in finished else []
            needs_samples = False
            for measure in study.measures_for(planned.seed, planned.config.model.class_conditional):
                evaluations_total += 1
                if any(_record_matches(r, measure, config, classes) for r in stored):
                    evaluations_done += 1
                    continue
                resamples[measure] += config.bootstrap_rounds
                if measure == "loss":
                    loss_calls += heldout * config.loss_bands
                else:
                    needs_samples = True
                    inception += config.num_samples if measure == "inception" else 0
            # the images one measure drew serve the next (a study measures Inception after the cheap ones)
            stored_samples = index in finished and run.level(index).samples_path(samples_name).is_file()
            sampled += config.num_samples if needs_samples and not stored_samples else 0
        left = work.setdefault(owners[planned.search], {"train_steps": 0, "sampled_images": 0, "loss_calls": 0})
        for key, now, then in zip(left, (train_steps, sampled, loss_calls), before):
            left[key] += now - then
    cka_total = len(study.cka_pairs()) * len(cka_levels(study, runs))
    cka_done = sum(
        1
        for a, b in study.cka_pairs()
        for level in cka_levels(study, runs)
        if cka_folder(out, study, a, b, level).summary.exists()
    )
    return Plan(
        runs,
        train_steps,
        levels_total,
        levels_done,
        evaluations_total,
        evaluations_done,
        sampled,
        inception,
        resamples,
        loss_calls,
        cka_total,
        cka_done,
        work,
        sparse_work,
    )


def cka_levels(study: Study, runs: list[PlannedRun]) -> list[int]:
    if not study.settings.cka_search:
        return []
    pruned = next(r.levels for r in runs if r.search == study.settings.cka_search and r.control is None)
    return list(study.settings.cka_levels) or [i for i in pruned if i > 0]


def cka_folder(out: Path, study: Study, seed_a: int, seed_b: int, level: int):
    return StudyFolder(out).cka_folder(study.settings.cka_search, seed_a, seed_b, level)


__all__ = ["Plan", "cka_folder", "cka_levels", "make_plan"]
