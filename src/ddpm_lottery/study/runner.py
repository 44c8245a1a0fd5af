"""``ddpm-lottery study FILE``: a declared study, planned, costed, run, resumed and answered.

A study file is a config file (TOML or YAML) with three more tables::

    [study]                      name, data_seeds (replicates), control_seed_init, cka_search, cka_levels
    [model] [train] [prune] ...  the settings every run shares (any find-ticket setting)
    [eval] [sampling] [cka]      how every level is measured, and how tickets are compared
    [searches.NAME]              one ticket search: the settings where it differs (strategy, order, ...)
    [controls]                   reinit = ["NAME", ...], random = ["NAME", ...]: the searches they mirror
    [frontier]                   with study.frontier_search: the efficiency frontier's samplers and sweep

Per data seed ``s`` it makes these runs under ``OUT/runs/``: ``NAME-seed{s}`` for every search (the
first search trains the dense model, the others start from its level 0 and theta_tau; a search whose settings
outside ``[prune]`` differ, e.g. a wider ``[model]``, trains its own, which later searches like it share) and
``NAME-seed{s}-{control}`` for every control.  It then measures every finished level with every measure
of ``[eval]``, compares the tickets of ``cka_search`` pairwise across seeds with CKA and its baselines,
draws the efficiency frontier of ``frontier_search`` (first data seed) when asked, and writes ``OUT/findings.json``, ``OUT/findings.md`` and ``OUT/report.html``.

Everything finished is reused, so running it again after a kill resumes it; a run that another
process holds is skipped and picked up on the next pass, so two processes (``OMP_NUM_THREADS=1``
each) share a study's work.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm_lottery.config.settings import (
    SECTION_CLASSES, STUDY_TABLES, CkaConfig, EvalConfig, FrontierConfig, LotteryConfig, StudySettings,
    apply_overrides, check_config, read_config_file, to_dict,
)
from ddpm_lottery.utils.errors import FolderBusy, UserError
from ddpm_lottery.utils.files import make_dirs, read_json, write_json
from ddpm_lottery.runs.folders import Run, StudyFolder

# Sections a study file may hold beside [study], and the config each one feeds.
RUN_SECTIONS = ("data", "model", "diffusion", "train", "prune", "runtime")
EVAL_SECTIONS = ("eval", "sampling", "runtime")
# Where data is read and where work runs: never part of a study's identity.
SESSION_SETTINGS = ("data.data_dir", "data.download", "data.mirror", "runtime.device", "runtime.log_to")
STUDY_FILE_TABLES = ("study", *RUN_SECTIONS, "eval", "sampling", "cka", "frontier", *STUDY_TABLES)


@dataclass
class PlannedRun:
    """One run of the study: its folder, config and the levels it will have."""

    name: str
    search: str
    seed: int
    config: LotteryConfig
    control: str | None = None  # None for a search, else the CONTROLS name
    source: str | None = None  # a control's search run; a later search's dense-model run
    levels: list[int] = field(default_factory=list)

    @property
    def measured_levels(self) -> list[int]:
        """Levels measured: a later search's level 0 is the first search's dense model, measured there."""
        return [i for i in self.levels if not (i == 0 and self.source and self.control is None)]


@dataclass
class Study:
    path: Path
    settings: StudySettings
    run_values: dict  # section.field -> value shared by every run
    searches: dict[str, dict]  # name -> section.field -> value
    controls: dict[str, list[str]]  # control name -> searches it mirrors
    evaluation: EvalConfig
    cka: CkaConfig
    frontier: FrontierConfig | None = None  # None: the study draws no frontier

    # -- identity ----------------------------------------------------------------------------------

    def declaration(self) -> dict:
        """What makes the study's runs: another study in the same folder is refused on any change here."""
        runs = {k: v for k, v in self.run_values.items() if k not in SESSION_SETTINGS}
        return {"name": self.settings.name, "runs": runs, "searches": self.searches,
                "controls": self.controls, "data_seeds": list(self.settings.data_seeds),
                "control_seed_init": self.settings.control_seed_init}

    # -- runs --------------------------------------------------------------------------------------

    def search_config(self, search: str, seed: int) -> LotteryConfig:
        config = LotteryConfig()
        apply_overrides(config, self.run_values, source=str(self.path))
        apply_overrides(config, self.searches[search], source=f"{self.path} [searches.{search}]")
        config.train.seed_data = seed
        return config

    def dense_sources(self) -> dict[str, str]:
        """Search -> the search whose run trains its dense model: the first search declared with the same
        settings outside ``[prune]`` (so a width study's searches of one width share one dense model, and
        each width trains its own)."""
        owners: dict[str, str] = {}
        sources = {}
        for search in self.searches:
            trained = to_dict(self.search_config(search, 0))
            trained.pop("prune")
            key = repr(sorted((section, sorted(values.items())) for section, values in trained.items()))
            sources[search] = owners.setdefault(key, search)
        return sources

    def runs(self, out: Path) -> list[PlannedRun]:
        """Every run, in the order they are made: seed by seed, each search then its controls."""
        planned = []
        dense_owner = self.dense_sources()
        control_levels = list(self.settings.control_levels)
        for seed in self.settings.data_seeds:
            for search in self.searches:
                config = self.search_config(search, seed)
                name = f"{search}-seed{seed}"
                source = None
                if dense_owner[search] != search:
                    source = f"{dense_owner[search]}-seed{seed}"
                    config.prune.dense_from = str(StudyFolder(out).run_path(source))
                levels = planned_levels(config)
                planned.append(PlannedRun(name, search, seed, config, None, source, levels))
                for control, sources in self.controls.items():
                    if search not in sources:
                        continue
                    branch = copy.deepcopy(self.search_config(search, seed))
                    branch.train.seed_init = self.settings.control_seed_init
                    branch.prune.control_of = str(StudyFolder(out).run_path(name))
                    if control == "reinit":
                        branch.prune.reinit = True
                    else:
                        branch.prune.strategy = "random"
                    mirrored = [i for i in levels if i > 0 and (not control_levels or i in control_levels)]
                    branch.prune.levels = tuple(mirrored) if control_levels else ()
                    planned.append(PlannedRun(f"{name}-{control}", search, seed, branch, control, name, mirrored))
        return planned

    def measures_for(self, seed: int) -> list[str]:
        """The measures taken on the levels of data seed ``seed``."""
        limited = self.settings.inception_seeds
        return [m for m in self.evaluation.measures if not (m == "inception" and limited and seed not in limited)]

    def cka_pairs(self) -> list[tuple[int, int]]:
        if not self.settings.cka_search:
            return []
        return list(itertools.combinations(self.settings.data_seeds, 2))


def planned_levels(config: LotteryConfig) -> list[int]:
    """The levels a search will have: 0 and one per round (rounds estimated for a target without schedule)."""
    prune = config.prune
    if prune.sparsity_schedule:
        rounds = len(prune.sparsity_schedule)
    elif prune.one_shot:
        rounds = 1
    else:
        # every strategy removes about p of the survivors per round
        needed = math.ceil(math.log(1 - prune.target_sparsity) / math.log(1 - prune.prune_ratio) - 1e-9)
        rounds = min(prune.max_rounds, max(1, needed))
    return list(range(rounds + 1))


# ----------------------------------------------------------------------------------------------
# Reading a study file


SHIPPED = Path(__file__).resolve().parent / "shipped"


def shipped_studies() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def resolve_study(name_or_path: str | Path) -> Path:
    """A study file's path, or the shipped study of that name (``quickstart``, ``cpu-digits``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name_or_path}.toml"
    if shipped.is_file() and path.suffix == "":
        return shipped
    raise UserError(f"study file {path} does not exist; give a path, or the name of a shipped study: "
                    f"{', '.join(shipped_studies())}")


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is one line naming the field."""
    from ddpm_lottery.lottery.loop import CONTROLS
    from ddpm_lottery.pruning.masks import STRATEGIES

    path = resolve_study(path)
    raw = read_config_file(path)
    unknown = [key for key in raw if key not in STUDY_FILE_TABLES]
    if unknown:
        raise UserError(f"{path}: unknown table [{unknown[0]}]; a study file holds "
                        f"{', '.join(f'[{t}]' for t in STUDY_FILE_TABLES)}")
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise UserError(f"{path}: {key} must be a table ([{key}] with settings under it)")
    if "study" not in raw:
        raise UserError(f"{path} has no [study] table: it is a config file, not a study (give it to find-ticket "
                        "--config), or add [study] with a name and data_seeds")
    settings = StudySettings()
    apply_overrides(settings, raw["study"], source=str(path))
    check_config(settings)
    seeds = list(settings.data_seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: study.data_seeds must list distinct seeds, got {seeds}")

    run_values = {f"{section}.{k}": v for section in RUN_SECTIONS for k, v in raw.get(section, {}).items()}
    probe = LotteryConfig()
    apply_overrides(probe, run_values, source=str(path))

    searches_raw = raw.get("searches") or {}
    if not searches_raw:
        raise UserError(f"{path} declares no search: add a [searches.NAME] table with a strategy "
                        f"({', '.join(STRATEGIES)})")
    searches: dict[str, dict] = {}
    for name, table in searches_raw.items():
        where = f"searches.{name}"
        if not isinstance(table, dict):
            raise UserError(f"{path}: [{where}] must be a table of settings")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"{path}: search name {name!r} must be letters, digits, - or _ (it names folders)")
        values = _flatten(table)
        strategy = values.get("strategy", values.get("prune.strategy", probe.prune.strategy))
        if strategy not in STRATEGIES:
            raise UserError(f"{path}: {where}.strategy is {strategy!r}, which is not a search strategy; choose one "
                            f"of {', '.join(STRATEGIES)} (controls go in [controls])")
        for key in values:
            if key.split(".")[-1] in ("control_of", "reinit", "dense_from", "seed_data"):
                raise UserError(f"{path}: {where}.{key} is set by the study itself (controls in [controls], seeds "
                                "in study.data_seeds); remove it")
        config = copy.deepcopy(probe)
        apply_overrides(config, values, source=f"{path} [{where}]")
        check_config(config)
        searches[name] = values

    controls: dict[str, list[str]] = {}
    for control, sources in (raw.get("controls") or {}).items():
        if control not in CONTROLS:
            raise UserError(f"{path}: controls.{control} is not a control; choose from {', '.join(CONTROLS)}")
        sources = [sources] if isinstance(sources, str) else sources
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise UserError(f"{path}: controls.{control} must list search names, e.g. {control} = [\"unified\"]")
        for source in sources:
            if source not in searches:
                raise UserError(f"{path}: controls.{control} names search {source!r}, which the study does not "
                                f"declare; declared: {', '.join(searches)}")
        controls[control] = list(sources)
    outside = [s for s in settings.inception_seeds if s not in seeds]
    if outside:
        raise UserError(f"{path}: study.inception_seeds lists {outside[0]}, which is not in study.data_seeds {seeds}")
    if settings.cka_search:
        if settings.cka_search not in searches:
            raise UserError(f"{path}: study.cka_search names {settings.cka_search!r}, which the study does not "
                            f"declare; declared: {', '.join(searches)}")
        strategy = LotteryConfig()
        apply_overrides(strategy, {**run_values, **searches[settings.cka_search]}, source=str(path))
        if STRATEGIES[strategy.prune.strategy].imposes_profile:
            raise UserError(f"{path}: study.cka_search {settings.cka_search!r} uses {strategy.prune.strategy}, which "
                            "imposes the upstream/downstream profile CKA is meant to motivate; pair tickets of a "
                            "search that imposes none (unified or global)")
        if len(seeds) < 2:
            raise UserError(f"{path}: study.cka_search compares tickets of two data seeds; list at least two in "
                            "study.data_seeds")

    evaluation = EvalConfig()
    apply_overrides(evaluation, {f"{s}.{k}": v for s in EVAL_SECTIONS for k, v in raw.get(s, {}).items()
                                 if not (s == "runtime" and k not in ("device",))}, source=str(path))
    check_config(evaluation)
    if "inception" in evaluation.measures:
        # evaluation comes after every ticket is trained: refuse now rather than hours later
        from ddpm_lottery.measures.inception import check_sample_counts

        check_sample_counts(evaluation.num_samples, evaluation.reference_samples, evaluation.kid_subset_size)
    cka = CkaConfig()
    apply_overrides(cka, raw.get("cka", {}), source=str(path))
    check_config(cka)
    return Study(path, settings, run_values, searches, controls, evaluation, cka,
                 _frontier_config(path, settings, searches, evaluation, raw.get("frontier")))


def _frontier_config(path: Path, settings: StudySettings, searches: dict, evaluation: EvalConfig,
                     table: dict | None) -> FrontierConfig | None:
    """The frontier a study draws: its [frontier] table, measured with the study's own protocol."""
    if not settings.frontier_search:
        if table:
            raise UserError(f"{path}: a [frontier] table needs study.frontier_search (the search it is drawn for)")
        return None
    if settings.frontier_search not in searches:
        raise UserError(f"{path}: study.frontier_search names {settings.frontier_search!r}, which the study does not "
                        f"declare; declared: {', '.join(searches)}")
    sampled = [m for m in evaluation.measures if m != "loss"]
    if not sampled:
        raise UserError(f"{path}: the frontier compares samplers, so [eval].measures needs domain or inception "
                        "(the held-out loss does not sample)")
    config = FrontierConfig()
    apply_overrides(config, {f"frontier.{k}": v for k, v in (table or {}).items()}, source=f"{path} [frontier]")
    for section in ("eval", "sampling", "runtime"):
        setattr(config, section, copy.deepcopy(getattr(evaluation, section)))
    config.eval.measures = (sampled[0],)
    return check_config(config)


def _flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict) and key in SECTION_CLASSES:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------------------------
# The study folder


def open_study_folder(study: Study, out: Path) -> None:
    """Create OUT for ``study``, or check that OUT holds this very study."""
    folder = StudyFolder(out)
    record = folder.record
    declaration = study.declaration()
    if record.exists():
        stored = read_json(record, "study record", f"delete {record} if the folder holds no study")
        before = dict(stored.get("declaration", {}))
        before["runs"] = {k: v for k, v in before.get("runs", {}).items() if k not in SESSION_SETTINGS}
        if before != declaration:
            now = declaration
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise UserError(f"{out} holds study {before.get('name')!r}, which differs from {study.path} in "
                            f"{', '.join(changed)}; give another --out folder")
        if stored.get("notes") != _notes(study):
            write_json(record, {**stored, "notes": _notes(study)})
        return
    if out.exists() and any(out.iterdir()) and not folder.runs_dir.is_dir():
        raise UserError(f"{out} exists and holds other files; give an empty or new --out folder for the study")
    make_dirs(out)
    write_json(record, {"declaration": declaration, "notes": _notes(study), "file": str(study.path),
                        "created": time.time()})


def _notes(study: Study) -> dict:
    """What the findings say beside the numbers (settings that do not change any result)."""
    return {"description": study.settings.description, "decided_by": study.settings.decided_by,
            "cka_search": study.settings.cka_search}




# ----------------------------------------------------------------------------------------------
# The plan: what is left to do, and what it costs on this device


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

    @property
    def complete(self) -> bool:
        """Every planned level, evaluation and CKA pair is stored."""
        return (self.levels_done == self.levels_total and self.evaluations_done == self.evaluations_total
                and self.cka_done == self.cka_total)


def _level_steps(run: PlannedRun, index: int) -> int:
    steps = run.config.train.steps
    if index == 0:
        return steps if run.source is None and run.control is None else 0
    return steps - int(round(run.config.prune.rewind_fraction * steps))


def _record_matches(record: dict, measure: str, config: EvalConfig) -> bool:
    """Planning only: does a stored record look like this protocol's (the run itself checks exactly)."""
    from ddpm_lottery.measures.evaluate import sampling_protocol

    spec = record.get("protocol", {})
    if record.get("measure") != measure or spec.get("bootstrap_rounds") != config.bootstrap_rounds:
        return False
    if measure == "loss":
        return (spec.get("bands"), spec.get("heldout", {}).get("split")) == (config.loss_bands, config.heldout_split)
    return (spec.get("sampling") == sampling_protocol(config)
            and spec.get("reference", {}).get("split") == config.reference_split)


def make_plan(study: Study, out: Path) -> Plan:
    from ddpm_lottery.measures.evaluate import sampling_key, sampling_protocol

    runs = study.runs(out)
    config = study.evaluation
    samples_name = sampling_key(sampling_protocol(config))
    measures = list(config.measures)
    train_steps = levels_total = levels_done = evaluations_total = evaluations_done = 0
    sampled = inception = loss_calls = 0
    resamples = {m: 0 for m in measures}
    heldout = config.heldout_images
    owners = study.dense_sources()
    work: dict[str, dict[str, int]] = {}
    for planned in runs:
        before = (train_steps, sampled, loss_calls)
        path = StudyFolder(out).run_path(planned.name)
        run = Run.open(path) if Run.is_run(path) else None
        finished = set(run.finished_levels()) if run else set()
        for index in planned.levels:
            levels_total += 1
            if index in finished:
                levels_done += 1
            else:
                train_steps += _level_steps(planned, index)
            if index not in planned.measured_levels:
                continue
            stored = run.level(index).evaluations() if index in finished else []
            needs_samples = False
            for measure in study.measures_for(planned.seed):
                evaluations_total += 1
                if any(_record_matches(r, measure, config) for r in stored):
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
    cka_done = sum(1 for a, b in study.cka_pairs() for level in cka_levels(study, runs)
                   if cka_folder(out, study, a, b, level).summary.exists())
    return Plan(runs, train_steps, levels_total, levels_done, evaluations_total, evaluations_done, sampled,
                inception, resamples, loss_calls, cka_total, cka_done, work)


def cka_levels(study: Study, runs: list[PlannedRun]) -> list[int]:
    if not study.settings.cka_search:
        return []
    pruned = next(r.levels for r in runs if r.search == study.settings.cka_search and r.control is None)
    return list(study.settings.cka_levels) or [i for i in pruned if i > 0]


def cka_folder(out: Path, study: Study, seed_a: int, seed_b: int, level: int):
    return StudyFolder(out).cka_folder(study.settings.cka_search, seed_a, seed_b, level)


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

    def per_network(self, plan: Plan) -> list[tuple[dict, float, float]]:
        """(work left, step s, call s) for each network the plan trains; the first network's costs where
        one was not timed apart."""
        work = plan.network_work or {"": {"train_steps": plan.train_steps, "sampled_images": plan.sampled_images,
                                          "loss_calls": plan.loss_calls}}
        return [(left, *self.networks.get(owner, (self.train_step_s, self.call_per_image_s)))
                for owner, left in work.items()]

    def estimate(self, plan: Plan, config: EvalConfig) -> dict[str, float]:
        from ddpm_lottery.models.diffusion import sampling_steps

        networks = self.per_network(plan)
        steps = sampling_steps(config.sampling)
        parts = {"training": sum(left["train_steps"] * step for left, step, _ in networks),
                 "sampling": sum(left["sampled_images"] * steps * call for left, _, call in networks),
                 "Inception features": plan.inception_images * (self.inception_per_image_s or 0.0),
                 "held-out loss": sum(left["loss_calls"] * call for left, _, call in networks),
                 "intervals": sum(count * self.frechet_s.get(m, 0.0) for m, count in plan.resamples.items())}
        parts["total"] = sum(parts.values())
        return parts


def _data_shape(config: LotteryConfig) -> tuple[int, int]:
    """(channels, side) the network sees, without reading the data (a dry run may precede the download)."""
    from ddpm_lottery.models.networks import PRESETS, input_size

    channels = config.data.channels or PRESETS[config.model.preset].get("in_channels") or (
        3 if config.data.dataset in ("cifar10", "cifar100", "imagefolder") else 1)
    return channels, input_size(config)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def measure_costs(study: Study, *, probe_batch: int = 16) -> DeviceCosts:
    """Time a training step, a denoiser call, the feature network and one resampled distance here.

    The training step is timed at ``min(batch, probe_batch)`` and scaled linearly to the batch, so a
    dry run of a paper-scale study on a CPU takes seconds, not the minutes of one real step.
    """
    from ddpm_lottery.measures.inception import FrechetReference
    from ddpm_lottery.utils.launch import resolve_device

    owners = sorted(set(study.dense_sources().values()), key=list(study.searches).index)
    first = study.search_config(owners[0], study.settings.data_seeds[0])
    device = resolve_device(study.evaluation.runtime.device if first.runtime.device == "auto"
                            else first.runtime.device)
    channels, side = _data_shape(first)
    step_s, call_s = _network_costs(study, first, device, probe_batch)
    networks = {owner: _network_costs(study, study.search_config(owner, study.settings.data_seeds[0]), device,
                                      probe_batch) for owner in owners[1:]}
    inception_s = None
    measures = study.evaluation.measures
    frechet = {}
    if "inception" in measures:
        from ddpm_lottery.measures.inception import InceptionFeatures

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
    return DeviceCosts(str(device), torch.get_num_threads(), step_s, first.train.batch_size, call_s, inception_s,
                       frechet, networks)


def _network_costs(study: Study, first: LotteryConfig, device, probe_batch: int) -> tuple[float, float]:
    """One network's training step (s) and denoiser call (s per image) on ``device``."""
    from ddpm_lottery.models.diffusion import noise_scheduler
    from ddpm_lottery.models.networks import build_model

    channels, side = _data_shape(first)
    model = build_model(first.model, channels, image_size=side).to(device)
    scheduler = noise_scheduler(first.diffusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = min(first.train.batch_size, probe_batch)
    x = torch.randn(batch, channels, side, side, device=device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)

    def step():
        loss = (model(x, t).sample - x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step_s = _timed(step, 2) * first.train.batch_size / batch
    if step_s < 3 and batch < first.train.batch_size:
        # small networks run small batches inefficiently: time the real batch when it is cheap to
        x = torch.randn(first.train.batch_size, channels, side, side, device=device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), device=device)
        step_s = _timed(step, 2)
    sample_batch = min(study.evaluation.sample_batch_size, study.evaluation.num_samples, 64)
    xs = torch.randn(sample_batch, channels, side, side, device=device)
    ts = torch.full((sample_batch,), 500, device=device, dtype=torch.long)
    with torch.no_grad():
        call_s = _timed(lambda: model(xs, ts), 2) / sample_batch
    return step_s, call_s


def _hours(seconds: float) -> str:
    if seconds >= 48 * 3600:
        return f"{seconds / 3600:,.0f} h ({seconds / 86400:,.1f} days)"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def describe_plan(study: Study, plan: Plan, out: Path, costs: DeviceCosts | None) -> str:
    from ddpm_lottery.models.diffusion import sampling_steps

    config = study.evaluation
    searches = sum(1 for r in plan.runs if r.control is None)
    lines = [f"study {study.settings.name!r} ({study.path}) into {out}",
             f"runs: {len(plan.runs)} ({searches} searches, {len(plan.runs) - searches} controls) over data seeds "
             f"{', '.join(map(str, study.settings.data_seeds))}",
             f"levels: {plan.levels_total} planned, {plan.levels_done} finished; training steps to go: "
             f"{plan.train_steps:,}",
             f"evaluations: {plan.evaluations_total} planned ({', '.join(config.measures)} per level"
             + (f"; inception on data seeds {', '.join(map(str, study.settings.inception_seeds))} only"
                if study.settings.inception_seeds and "inception" in config.measures else "") + "), "
             f"{plan.evaluations_done} stored; images to sample: {plan.sampled_images:,} "
             f"({config.sampler} {sampling_steps(config.sampling)} steps, N={config.num_samples} per level)"
             + (f"; Inception images: {plan.inception_images:,}" if "inception" in config.measures else ""),
             f"CKA: {plan.cka_total} ticket pairs × levels planned, {plan.cka_done} stored"]
    for run in plan.runs:
        kind = f"control {run.control} of {run.source}" if run.control else (
            f"{run.config.prune.strategy}" + (f" --order {run.config.prune.order}"
                                              if run.config.prune.strategy == "varying" else "")
            + (f", dense model from {run.source}" if run.source else ", trains the dense model"))
        lines.append(f"  {run.name:<28} {kind}; levels {','.join(map(str, run.levels))}")
    if costs is not None:
        parts = costs.estimate(plan, config)
        lines.append(
            f"measured on {costs.device} ({costs.threads} threads): training step {costs.train_step_s:.3g} s at batch "
            f"{costs.batch_size}, denoiser {1e3 * costs.call_per_image_s:.3g} ms per image and call"
            + (f", Inception {1 / costs.inception_per_image_s:.3g} images/s" if costs.inception_per_image_s else "")
            + "".join(f", one {m} resample {s:.3g} s" for m, s in costs.frechet_s.items())
            + "".join(f"; {owner}'s network: training step {step:.3g} s, denoiser {1e3 * call:.3g} ms"
                      for owner, (step, call) in costs.networks.items()))
        if plan.complete:
            lines.append("estimated wall time: none, every planned level, evaluation and CKA pair is stored")
            return "\n".join(lines)
        lines.append("estimated wall time: " + _hours(parts["total"]) + " (" + ", ".join(
            f"{name} {_hours(value)}" for name, value in parts.items() if name != "total" and value > 0) + ") "
            f"in one process on {costs.threads} thread{'s' * (costs.threads != 1)}; processes started side by side "
            "on other cores share it")
    return "\n".join(lines)



# ----------------------------------------------------------------------------------------------
# Running it


class _Progress:
    """The study's one progress display: a bar over the estimated seconds of the work left."""

    def __init__(self, total_s: float, enabled: bool, log):
        self.bar = tqdm(total=max(1, round(total_s)), disable=not enabled, unit="s", unit_scale=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed} elapsed, ~{remaining} left]")
        self.enabled = enabled
        self._log = log

    def task(self, text: str) -> None:
        self.bar.set_description_str(text[:60])
        if not self.enabled:  # a log without the bar still says what each line below belongs to
            self._log(f"[{time.strftime('%H:%M:%S')}] {text}")

    def advance(self, seconds: float) -> None:
        self.bar.update(max(0, min(round(seconds), self.bar.total - self.bar.n)))

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.write(str(message))
        else:
            self._log(message)

    def close(self) -> None:
        self.bar.close()


def execute_study(path: str | Path, out: str | Path | None = None, *, dry_run: bool = False,
                  report_only: bool = False, progress: bool = True, data_dir: str | None = None,
                  device: str | None = None, log=print) -> tuple[Path, dict]:
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
        costs = measure_costs(study)
        log(describe_plan(study, plan, out, costs))
        return out, {"plan": plan, "costs": costs, "deferred": []}
    open_study_folder(study, out)
    if report_only:
        from ddpm_lottery.findings.questions import write_findings

        findings = write_findings(out, log=log)
        write_study_report(study, out, findings, log=log)
        log(f"study {study.settings.name!r}: findings and report of the complete study, in {out} (every planned "
            "level, evaluation and CKA pair is stored)" if plan.complete else
            f"study {study.settings.name!r}: findings and report of what is finished, in {out} (nothing was run; "
            f"`ddpm-lottery study {path} --out {out}` runs the rest)")
        return out, {"plan": plan, "costs": None, "deferred": [], "findings": findings}
    costs = measure_costs(study)
    log(describe_plan(study, plan, out, costs))
    started = time.perf_counter()
    bar = _Progress(costs.estimate(plan, study.evaluation)["total"], progress, log)
    deferred: list[str] = []
    per_step = costs.train_step_s
    by_name = {r.name: r for r in plan.runs}
    measuring = _Measuring(study, out, bar, costs, deferred)
    try:
        for seed in study.settings.data_seeds:
            for planned in (r for r in plan.runs if r.seed == seed):
                if _train(planned, out, by_name, bar, deferred):
                    bar.advance(sum(_level_steps(planned, i) for i in planned.levels) * per_step)
                # the cheap measures run by run, so findings grow while the study trains
                measuring.run(planned, [m for m in study.measures_for(seed) if m != "inception"])
                if study.frontier is not None and _is_frontier_run(study, planned):
                    _draw_frontier(study, plan, out, bar, deferred)  # as soon as its run is trained and measured
        _compare_all(study, plan, out, bar, deferred)
        # The costly measure last, seed by seed: a study cut short has answered every question on every seed
        # with the cheap measures, and with Inception on its first seeds.
        for seed in study.settings.data_seeds:
            for planned in (r for r in plan.runs if r.seed == seed):
                measuring.run(planned, study.measures_for(seed))
    finally:
        bar.close()
    from ddpm_lottery.findings.questions import write_findings

    findings = write_findings(out, log=log)
    write_study_report(study, out, findings, log=log)
    elapsed = time.perf_counter() - started
    if deferred:
        log(f"{len(deferred)} parts wait for other processes or runs (re-run this command to finish them): "
            + "; ".join(deferred[:4]) + (" ..." if len(deferred) > 4 else ""))
    log(f"study {study.settings.name!r}: this session {elapsed / 60:.1f} min; findings in "
        f"{StudyFolder(out).findings_md}")
    return out, {"plan": plan, "costs": costs, "deferred": deferred, "findings": findings}


def _train(planned: PlannedRun, out: Path, by_name: dict, bar: _Progress, deferred: list[str]) -> bool:
    """Train (or finish) one run; False when it was finished already or must wait."""
    from ddpm_lottery.lottery.loop import search_ticket

    path = StudyFolder(out).run_path(planned.name)
    if Run.is_run(path) and set(planned.levels) <= set(Run.open(path).finished_levels()):
        return False
    needed = [0] if planned.control is None else by_name[planned.source].levels if planned.source else []
    if planned.source and not _finished(StudyFolder(out).run_path(planned.source), needed):
        deferred.append(f"{planned.name}: waits for {planned.source}")
        return False
    bar.task(f"training {planned.name}")
    try:
        search_ticket(planned.config, path, progress=False, log=bar.log)
    except FolderBusy as exc:
        deferred.append(f"{planned.name}: {exc}")
        return False
    return True


def write_study_report(study: Study, out: Path, findings: dict, log=print) -> Path | None:
    """OUT/report.html: the findings table first, then every run of the study as the report shows runs."""
    import html

    from ddpm_lottery.reporting.report import build_report

    folder = StudyFolder(out)
    runs = [folder.run_path(r.name) for r in study.runs(out) if Run.is_run(folder.run_path(r.name))
            and Run.open(folder.run_path(r.name)).finished_levels()]
    if not runs:
        return None
    cka = folder.cka_folders()
    shipped = study.path.parent == SHIPPED
    # a shipped study is named by where it lives in the package, not by this machine's install path
    where = f"shipped with ddpm-lottery as studies/{study.path.name}" if shipped else str(study.path)
    intro = (f"<p>Study <b>{html.escape(study.settings.name)}</b> ({html.escape(where)}). "
             f"{html.escape(study.settings.description)}</p>")
    shown = study.path.stem if shipped else study.path
    command = f"ddpm-lottery study {shown} --out {out}"
    return build_report(runs, folder.report, cka_pairs=[c.dir for c in cka],
                        title=f"ddpm-lottery study: {study.settings.name}", intro=intro, commands=[command],
                        findings=findings, log=log)


def _finished(path: Path, levels: list[int]) -> bool:
    """Has the run at ``path`` finished every one of ``levels``?"""
    return Run.is_run(path) and set(levels) <= set(Run.open(path).finished_levels())


class _Measuring:
    """Measures a study's levels: costs, then the measures asked, cheapest first."""

    ORDER = ("loss", "domain", "inception")

    def __init__(self, study: Study, out: Path, bar: _Progress, costs: DeviceCosts, deferred: list[str]):
        from ddpm_lottery.models.diffusion import sampling_steps
        from ddpm_lottery.measures.evaluate import Evaluator

        config = study.evaluation
        self.study, self.out, self.bar, self.costs, self.deferred = study, out, bar, costs, deferred
        self.evaluator = Evaluator(config, progress=False, log=bar.log)
        self.per_level = {"loss": config.heldout_images * config.loss_bands * costs.call_per_image_s,
                          "domain": config.num_samples * sampling_steps(config.sampling) * costs.call_per_image_s,
                          "inception": config.num_samples * (costs.inception_per_image_s or 0)}

    def run(self, planned: PlannedRun, measures: list[str]) -> None:
        """``measures`` of every finished level of one run (under its lock: one process measures a run)."""
        from ddpm_lottery.pruning.costs import stored_costs

        config = self.study.evaluation
        path = StudyFolder(self.out).run_path(planned.name)
        if not Run.is_run(path):
            return
        run = Run.open(path)
        finished = [i for i in planned.levels if i in run.finished_levels()]
        levels = [i for i in planned.measured_levels if i in finished]
        if not finished:
            return
        try:
            with run.lock():
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
                    if any(not any(_record_matches(r, m, config) for r in level.evaluations()) for m in measures):
                        waiting = (f"measures of {planned.name} level {index}: its {config.sampling.weights} "
                                   f"weights are gone; {level.retrain_advice()}")
                        if waiting not in self.deferred:  # the cheap pass and the costly one both find it
                            self.deferred.append(waiting)
                        levels.remove(index)
                for measure in [m for m in self.ORDER if m in measures]:
                    for index in levels:
                        self.bar.task(f"{measure}: {planned.name} level {index}")
                        stored = any(_record_matches(r, measure, config) for r in run.level(index).evaluations())
                        self.evaluator.measure(run.level(index), measure)
                        if not stored:
                            self.bar.advance(self.per_level[measure]
                                             + config.bootstrap_rounds * self.costs.frechet_s.get(measure, 0))
        except FolderBusy as exc:
            self.deferred.append(f"{', '.join(measures)} of {planned.name}: {exc}")


def _compare_all(study: Study, plan: Plan, out: Path, bar: _Progress, deferred: list[str]) -> None:
    """CKA of every pair of tickets of ``cka_search`` (one per data seed), with its baselines."""
    from ddpm_lottery.measures.cka import compare_with_baselines

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
            lost = [Run.open(r).level(level) for r in (run_a, run_b)
                    if not Run.open(r).level(level).has_weights(study.cka.weights)]
            if lost:
                deferred.append(f"CKA of {run_a.name} and {run_b.name} at level {level}: the {study.cka.weights} "
                                f"weights of {lost[0].label()} are gone; {lost[0].retrain_advice()}")
                continue
            bar.task(f"CKA {run_a.name} vs {run_b.name}, level {level}")
            compare_with_baselines(run_a, run_b, level, study.cka, out=cka.dir, seed_init_b=study.settings.control_seed_init,
                                   log=bar.log)

def _is_frontier_run(study: Study, planned: PlannedRun) -> bool:
    return (planned.search == study.settings.frontier_search and planned.control is None
            and planned.seed == study.settings.data_seeds[0])


def _draw_frontier(study: Study, plan: Plan, out: Path, bar: _Progress, deferred: list[str]) -> None:
    """The efficiency frontier of ``frontier_search`` (first data seed), once its run is finished.

    Stored evaluations are reused; the networks are timed again only when the frontier is missing or was
    drawn with other settings (timing is the frontier's one figure that depends on the machine's moment)."""
    from ddpm_lottery.frontier.sweep import frontier

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
    if folder.record.exists() and read_json(folder.record, "frontier").get("settings") == settings:
        return
    bar.task(f"frontier of {planned.name}")
    try:
        with run.lock():
            frontier([path], study.frontier, progress=False, log=bar.log)
    except FolderBusy as exc:
        deferred.append(f"the frontier of {planned.name}: {exc}")


__all__ = ["Study", "PlannedRun", "Plan", "load_study", "make_plan", "measure_costs", "describe_plan",
           "planned_levels", "open_study_folder", "run_study"]
