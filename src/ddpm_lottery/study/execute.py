"""``ddpm-lottery study FILE``: a declared study, planned, costed, run, resumed and answered.

It trains every run the study file declares (see :mod:`ddpm_lottery.study.spec`), measures every finished
level with every measure of ``[eval]``, compares the tickets of ``cka_search`` pairwise across seeds with CKA
and its baselines, draws the efficiency frontier of ``frontier_search`` (first data seed) when asked, and
writes ``OUT/findings.json``, ``OUT/findings.md`` and ``OUT/report.html``.

Everything finished is reused, so running it again after a kill resumes it; a run that another
process holds is skipped and picked up on the next pass, so two processes (``OMP_NUM_THREADS=1``
each) share a study's work.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from ddpm_lottery.config import to_dict
from ddpm_lottery.findings import render  # render.write_findings, looked up when called (tests replace it)
from ddpm_lottery.findings.comparisons import reference_collection
from ddpm_lottery.lottery.commands import search_ticket
from ddpm_lottery.lottery.costs import stored_costs
from ddpm_lottery.measures.cka import compare_with_baselines
from ddpm_lottery.measures.evaluate import Evaluator
from ddpm_lottery.measures.frontier import frontier
from ddpm_lottery.measures.protocol import for_run
from ddpm_lottery.models.conditioning import run_classes
from ddpm_lottery.models.diffusion import sampling_steps
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.records import FrontierRecord, read_record
from ddpm_lottery.runs.run import Run
from ddpm_lottery.study import estimate, report  # their functions looked up when called (tests replace them)
from ddpm_lottery.study.folder import check_study_folder, open_study_folder
from ddpm_lottery.study.plan import Plan, _level_steps, _record_matches, cka_folder, cka_levels, make_plan
from ddpm_lottery.study.spec import PlannedRun, Study, load_study
from ddpm_lottery.utils.errors import FolderBusy, UserError
from ddpm_lottery.utils.units import duration


class _Progress:
    """The study's one progress display: a bar over the plan's estimated seconds of the work left.

    The time left comes from the plan's own estimate, never from tqdm's rate (which, fed a few cheap
    measures while a level trained, once said 1:28:41 for a 5-minute job): the estimate of the work still to
    do, scaled by this session's pace (the seconds taken per estimated second of the work done so far).
    Work is counted as each level is stored, so the pace is known once the first level is finished."""

    def __init__(self, total_s: float, enabled: bool, log, clock=time.perf_counter):
        self.estimate_s, self.done_s = total_s, 0.0
        self.clock, self.started = clock, clock()
        self.bar = tqdm(
            total=max(1, round(total_s)),
            disable=not enabled,
            unit="s",
            unit_scale=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed} elapsed{postfix}]",
        )
        self.enabled = enabled
        self._log = log
        self._show_left()

    def left_s(self) -> float:
        """Seconds left: the estimate of the work left, at this session's pace once some work is done."""
        left = max(0.0, self.estimate_s - self.done_s)
        if self.done_s <= 0:
            return left
        return left * (self.clock() - self.started) / self.done_s

    def _show_left(self) -> None:
        how = "" if self.done_s > 0 else " by the plan's estimate"
        self.bar.set_postfix_str(f"~{duration(self.left_s())} left{how}", refresh=False)

    def task(self, text: str) -> None:
        self._show_left()
        self.bar.set_description_str(text[:60])
        if not self.enabled:  # a log without the bar still says what each line below belongs to
            self._log(f"[{time.strftime('%H:%M:%S')}] {text}")

    def advance(self, seconds: float) -> None:
        """``seconds`` of the estimate are done."""
        self.done_s = min(self.estimate_s, self.done_s + max(0.0, seconds))
        self._show_left()
        self.bar.update(max(0, min(round(self.done_s) - self.bar.n, self.bar.total - self.bar.n)))

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.write(str(message))
        else:
            self._log(message)

    def close(self) -> None:
        self.bar.close()


def execute_study(
    path: str | Path,
    out: str | Path | None = None,
    *,
    dry_run: bool = False,
    report_only: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    device: str | None = None,
    log=print,
) -> tuple[Path, dict]:
    """Plan, and unless ``dry_run`` run, the study in ``path``; returns its folder and what was done
    (``plan``, ``costs``, ``deferred`` parts and ``findings``).

    ``report_only`` trains and measures nothing: it writes the findings and the report of what is finished
    (e.g. while other processes run the study; their work in progress is untouched).

    ``data_dir`` and ``device`` change where the data is read and where everything computes, never a
    result, so they are arguments of a session, not part of the study.
    """
    study = load_study(path)
    if data_dir is not None:
        study.run_values["data.data_dir"] = data_dir
    if device is not None:
        study.run_values["runtime.device"] = device
        study.evaluation.runtime.device = device
    out = Path(out) if out else Path("runs") / study.settings.name
    plan = make_plan(study, out)
    if dry_run:
        check_study_folder(study, out)  # before timing anything: a folder the run would refuse is refused here
        costs = estimate.measure_costs(study, plan=plan)
        log(estimate.describe_plan(study, plan, out, costs))
        return out, {"plan": plan, "costs": costs, "deferred": []}
    if study.reference is not None:
        # (g) reads the other study's runs when the findings are written: say now, not after the training,
        # that it is not there (the study's own findings do not need it, so the study goes on)
        try:
            reference_collection(out, study.reference.as_note())
        except UserError as missing:
            log(f"note: finding (g) will not be compared until the study it names is there: {missing}")
    open_study_folder(study, out)
    if report_only:
        findings = render.write_findings(out, log=log)
        report.write_study_report(study, out, findings, log=log)
        log(
            f"study {study.settings.name!r}: findings and report of the complete study, in {out} (every planned "
            "level, evaluation and CKA pair is stored)"
            if plan.complete
            else f"study {study.settings.name!r}: findings and report of what is finished, in {out} (nothing was run; "
            f"`ddpm-lottery study {path} --out {out}` runs the rest)"
        )
        return out, {"plan": plan, "costs": None, "deferred": [], "findings": findings}
    costs = estimate.measure_costs(study, plan=plan)
    log(estimate.describe_plan(study, plan, out, costs))
    started = time.perf_counter()
    bar = _Progress(costs.estimate(plan, study.evaluation)["total"], progress, log)
    deferred: list[str] = []
    by_name = {r.name: r for r in plan.runs}
    owners = study.dense_sources()
    measuring = _Measuring(study, out, bar, costs, deferred)
    try:
        for planned in plan.runs:  # in the study's run_order
            cheap = [m for m in study.measures_for(planned.seed) if m != "inception"]
            # what an earlier session stored is measured before the search trains on (a search resumed with its
            # dense model unmeasured would otherwise answer nothing until its last level); a run another
            # process is training waits for the pass below
            measuring.run(planned, cheap, defer_if_busy=False)
            step_s = costs.network_costs(owners[planned.search])[0]
            _train(planned, out, by_name, bar, deferred, measuring.as_trained(planned, cheap), step_s)
            # the cheap measures: each level as it is stored (as_trained), and here what was stored while another
            # process held the run (a copied dense model) or by a multi-process launch, which skips the hook
            measuring.run(planned, cheap)
            if study.frontier is not None and _is_frontier_run(study, planned):
                _draw_frontier(study, plan, out, bar, deferred)  # as soon as its run is trained and measured
            if planned.search == study.settings.cka_search and planned.control is None:
                # its ticket pairs as soon as both tickets exist (what is not finished yet is tried again below)
                _compare_all(study, plan, out, bar, [])
        _compare_all(study, plan, out, bar, deferred)
        # The costly measure last, seed by seed: a study cut short has answered every question on every seed
        # with the cheap measures, and with Inception on its first seeds.
        for seed in study.settings.data_seeds:
            for planned in (r for r in plan.runs if r.seed == seed):
                measuring.run(planned, study.measures_for(seed))
    finally:
        bar.close()
    findings = render.write_findings(out, log=log)
    report.write_study_report(study, out, findings, log=log)
    elapsed = time.perf_counter() - started
    if deferred:
        log(
            f"{len(deferred)} parts wait for other processes or runs (re-run this command to finish them): "
            + "; ".join(deferred[:4])
            + (" ..." if len(deferred) > 4 else "")
        )
    log(
        f"study {study.settings.name!r}: this session {elapsed / 60:.1f} min; findings in "
        f"{StudyFolder(out).findings_md}"
    )
    return out, {"plan": plan, "costs": costs, "deferred": deferred, "findings": findings}


def _train(
    planned: PlannedRun, out: Path, by_name: dict, bar: _Progress, deferred: list[str], after_level, step_s: float
) -> bool:
    """Train (or finish) one run, calling ``after_level`` with each level it stores and counting its estimated
    training seconds done as it is stored; False when it was finished already or must wait."""
    path = StudyFolder(out).run_path(planned.name)
    finished = set(Run.open(path).finished_levels()) if Run.is_run(path) else set()
    if set(planned.levels) <= finished:
        return False
    counted: set[int] = set()

    def level_stored(level: Level) -> None:
        if level.index not in counted and level.index in planned.levels:
            counted.add(level.index)
            bar.advance(_level_steps(planned, level.index) * step_s)
        after_level(level)

    needed = [0] if planned.control is None else by_name[planned.source].levels if planned.source else []
    if planned.source and not _finished(StudyFolder(out).run_path(planned.source), needed):
        deferred.append(f"{planned.name}: waits for {planned.source}")
        return False
    bar.task(f"training {planned.name}")
    try:
        search_ticket(planned.config, path, progress=False, log=bar.log, after_level=level_stored)
    except FolderBusy as exc:
        deferred.append(f"{planned.name}: {exc}")
        return False
    # a multi-process launch stores levels without the hook: what it trained counts once it is done
    now = set(Run.open(path).finished_levels()) if Run.is_run(path) else set()
    bar.advance(sum(_level_steps(planned, i) * step_s for i in planned.levels if i in now - finished - counted))
    return True


def _finished(path: Path, levels: list[int]) -> bool:
    """Has the run at ``path`` finished every one of ``levels``?"""
    return Run.is_run(path) and set(levels) <= set(Run.open(path).finished_levels())


class _Measuring:
    """Measures a study's levels: costs, then the measures asked, cheapest first."""

    ORDER = ("loss", "domain", "class-accuracy", "inception")

    def __init__(self, study: Study, out: Path, bar: _Progress, costs: estimate.DeviceCosts, deferred: list[str]):
        config = study.evaluation
        self.study, self.out, self.bar, self.costs, self.deferred = study, out, bar, costs, deferred
        self.evaluator = Evaluator(config, progress=False, log=bar.log)
        # the study's guidance settings serve its class-conditional runs; its unconditional ones sample without
        self.unguided = Evaluator(for_run(config, None), progress=False, log=bar.log)
        self.per_level = {
            "loss": config.heldout_images * config.loss_bands * costs.call_per_image_s,
            "domain": config.num_samples * sampling_steps(config.sampling) * costs.call_per_image_s,
            # the same images (drawn once, for whichever of the two runs first), then one classifier pass
            "class-accuracy": config.num_samples * sampling_steps(config.sampling) * costs.call_per_image_s,
            "inception": config.num_samples * (costs.inception_per_image_s or 0),
        }

    def run(self, planned: PlannedRun, measures: list[str], *, defer_if_busy: bool = True) -> None:
        """``measures`` of every finished level of one run (under its lock: one process measures a run); a run
        another process holds is noted as deferred, or left to a later pass without ``defer_if_busy``."""
        path = StudyFolder(self.out).run_path(planned.name)
        if not Run.is_run(path):
            return
        run = Run.open(path)
        finished = [i for i in planned.levels if i in run.finished_levels()]
        if not finished:
            return
        try:
            with run.lock():
                self._measure(run, planned, finished, measures)
        except FolderBusy as exc:
            if defer_if_busy:
                self.deferred.append(f"{', '.join(measures)} of {planned.name}: {exc}")

    def as_trained(self, planned: PlannedRun, measures: list[str]):
        """What the search calls with each level it has stored, while it holds the run's lock: ``measures`` of
        that level now, so a long search's findings grow level by level rather than when its last level is
        done (or, cut short, in a later session)."""

        def measure_level(level: Level) -> None:
            self._measure(Run.open(StudyFolder(self.out).run_path(planned.name)), planned, [level.index], measures)

        return measure_level

    def _measure(self, run: Run, planned: PlannedRun, finished: list[int], measures: list[str]) -> None:
        """``measures`` of the finished levels ``finished`` of ``run``, whose lock the caller holds."""
        classes = run_classes(run.config)
        config = for_run(self.study.evaluation, classes)
        evaluator = self.evaluator if classes is not None else self.unguided
        measures = [m for m in measures if classes is not None or m != "class-accuracy"]
        levels = [i for i in planned.measured_levels if i in finished]
        for index in finished:
            level = run.level(index)
            if level.has_weights(config.sampling.weights):
                # FLOPs, parameters, storage: seconds, read by the report; a level measured elsewhere (a
                # shared dense model's copy) gets them too, should its copy have been killed before them
                stored_costs(level)
                continue
            if index not in levels:
                continue
            # a level whose weights are gone: what it has measured stands; the rest waits, and the study
            # goes on with every other level
            if any(not any(_record_matches(r, m, config, classes) for r in level.evaluations()) for m in measures):
                waiting = (
                    f"measures of {planned.name} level {index}: its {config.sampling.weights} "
                    f"weights are gone; {level.retrain_advice()}"
                )
                if waiting not in self.deferred:  # the cheap pass and the costly one both find it
                    self.deferred.append(waiting)
                levels.remove(index)
        for measure in [m for m in self.ORDER if m in measures]:
            for index in levels:
                self.bar.task(f"{measure}: {planned.name} level {index}")
                stored = any(_record_matches(r, measure, config, classes) for r in run.level(index).evaluations())
                evaluator.measure(run.level(index), measure)
                if not stored:
                    self.bar.advance(
                        self.per_level[measure] + config.bootstrap_rounds * self.costs.frechet_s.get(measure, 0)
                    )


def _compare_all(study: Study, plan: Plan, out: Path, bar: _Progress, deferred: list[str]) -> None:
    """CKA of every pair of tickets of ``cka_search`` (one per data seed), with its baselines."""
    search = study.settings.cka_search
    if not search:
        return
    for seed_a, seed_b in study.cka_pairs():
        folder = StudyFolder(out)
        run_a, run_b = folder.run_path(f"{search}-seed{seed_a}"), folder.run_path(f"{search}-seed{seed_b}")
        for level in cka_levels(study, plan.runs):
            cka = cka_folder(out, study, seed_a, seed_b, level)
            if cka.summary.exists():
                continue
            if not all(Run.is_run(r) and level in Run.open(r).finished_levels() for r in (run_a, run_b)):
                deferred.append(f"CKA of {run_a.name} and {run_b.name} at level {level}: a ticket is not finished")
                continue
            lost = [
                Run.open(r).level(level)
                for r in (run_a, run_b)
                if not Run.open(r).level(level).has_weights(study.cka.weights)
            ]
            if lost:
                deferred.append(
                    f"CKA of {run_a.name} and {run_b.name} at level {level}: the {study.cka.weights} "
                    f"weights of {lost[0].label()} are gone; {lost[0].retrain_advice()}"
                )
                continue
            bar.task(f"CKA {run_a.name} vs {run_b.name}, level {level}")
            compare_with_baselines(
                run_a, run_b, level, study.cka, out=cka.dir, seed_init_b=study.settings.control_seed_init, log=bar.log
            )


def _is_frontier_run(study: Study, planned: PlannedRun) -> bool:
    return (
        planned.search == study.settings.frontier_search
        and planned.control is None
        and planned.seed == study.settings.data_seeds[0]
    )


def _draw_frontier(study: Study, plan: Plan, out: Path, bar: _Progress, deferred: list[str]) -> None:
    """The efficiency frontier of ``frontier_search`` (first data seed), once its run is finished.

    Stored evaluations are reused; the networks are timed again only when the frontier is missing or was
    drawn with other settings (timing is the frontier's one figure that depends on the machine's moment)."""
    if study.frontier is None:
        return
    planned = next(r for r in plan.runs if _is_frontier_run(study, r))
    path = StudyFolder(out).run_path(planned.name)
    if not _finished(path, planned.levels):
        deferred.append(f"the frontier of {planned.name}: its levels are not all finished")
        return
    run = Run.open(path)
    folder = run.frontier_folder()
    settings = to_dict(study.frontier)
    fix = f"delete {folder.dir} and run the study again to redo its frontier"
    if (
        folder.record.exists()
        and read_record(folder.record, FrontierRecord, "frontier", fix, finite=False)["settings"] == settings
    ):
        return
    bar.task(f"frontier of {planned.name}")
    try:
        with run.lock():
            frontier([path], study.frontier, progress=False, log=bar.log)
    except FolderBusy as exc:
        deferred.append(f"the frontier of {planned.name}: {exc}")


__all__ = ["execute_study"]
