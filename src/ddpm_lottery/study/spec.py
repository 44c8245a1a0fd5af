"""A study file: what ``ddpm-lottery study FILE`` reads and checks, and the runs it declares.

A study file is a config file (TOML or YAML) with three more tables::

    [study]                      name, data_seeds (replicates), control_seed_init, cka_search, cka_levels,
                                 compare_with (another study's search, for finding (g))
    [model] [train] [prune] ...  the settings every run shares (any find-ticket setting)
    [eval] [sampling] [cka]      how every level is measured, and how tickets are compared
    [searches.NAME]              one ticket search: the settings where it differs (strategy, order, ...)
    [controls]                   reinit = ["NAME", ...], random = ["NAME", ...]: the searches they mirror
    [frontier]                   with study.frontier_search: the efficiency frontier's samplers and sweep

Per data seed ``s`` it makes these runs under ``OUT/runs/``: ``NAME-seed{s}`` for every search (the
first search trains the dense model, the others start from its level 0 and theta_tau; a search whose settings
outside ``[prune]`` differ, e.g. a wider ``[model]``, trains its own, which later searches like it share) and
``NAME-seed{s}-{control}`` for every control.

A study is named by its file's path, or by the name of a study shipped in ``shipped/`` (the quickstart, the
CPU studies and the paper-scale recipes).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_lottery.config import (
    SECTION_CLASSES,
    STUDY_TABLES,
    CkaConfig,
    EvalConfig,
    FrontierConfig,
    LotteryConfig,
    StudySettings,
    apply_overrides,
    check_config,
    read_config_file,
    to_dict,
)
from ddpm_lottery.lottery.controls import CONTROLS
from ddpm_lottery.lottery.search import planned_rounds, validate
from ddpm_lottery.measures.inception import check_sample_counts
from ddpm_lottery.pruning.strategies import STRATEGIES
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.study.catalogue import SHIPPED, shipped_studies
from ddpm_lottery.study.reference import Reference, read_reference
from ddpm_lottery.utils.errors import UserError

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
    reference: Reference | None = None  # None: the study compares with no other study

    # -- identity ----------------------------------------------------------------------------------

    def declaration(self) -> dict:
        """What makes the study's runs: another study in the same folder is refused on any change here."""
        runs = {k: v for k, v in self.run_values.items() if k not in SESSION_SETTINGS}
        return {
            "name": self.settings.name,
            "runs": runs,
            "searches": self.searches,
            "controls": self.controls,
            "data_seeds": list(self.settings.data_seeds),
            "control_seed_init": self.settings.control_seed_init,
        }

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
        """Every run, in the order they are made (``run_order``): each search is followed by its controls; by
        seed, every search of one data seed before the next seed's, or by search, each search on every seed
        before the next search.  Either way a search runs after the search whose dense model it shares (the
        first one declared like it), since searches keep the order they are declared in."""
        planned = []
        dense_owner = self.dense_sources()
        control_levels = list(self.settings.control_levels)
        rounds_of: dict[str, list[int]] = {}
        for seed in self.settings.data_seeds:
            for search in self.searches:
                config = self.search_config(search, seed)
                name = f"{search}-seed{seed}"
                source = None
                if dense_owner[search] != search:
                    source = f"{dense_owner[search]}-seed{seed}"
                    config.prune.dense_from = str(StudyFolder(out).run_path(source))
                if search not in rounds_of:  # the data seed changes no round: the network is built once a search
                    rounds_of[search] = planned_levels(config)
                levels = rounds_of[search]
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
                    # a negative level counts from this search's sparsest: -1 is its last level
                    wanted = {i if i > 0 else levels[-1] + 1 + i for i in control_levels}
                    mirrored = [i for i in levels if i > 0 and (not control_levels or i in wanted)]
                    branch.prune.levels = tuple(mirrored) if control_levels else ()
                    planned.append(PlannedRun(f"{name}-{control}", search, seed, branch, control, name, mirrored))
        if self.settings.run_order == "by-search":
            searches = list(self.searches)
            planned.sort(key=lambda run: searches.index(run.search))  # stable: seeds, then controls, stay in order
        return planned

    def measures_for(self, seed: int, conditional: bool = True) -> list[str]:
        """The measures taken on the levels of data seed ``seed`` (of a class-conditional run, or not: class
        accuracy measures conditional runs only)."""
        limited = self.settings.inception_seeds
        return [
            m
            for m in self.evaluation.measures
            if not (m == "inception" and limited and seed not in limited) and (conditional or m != "class-accuracy")
        ]

    def cka_pairs(self) -> list[tuple[int, int]]:
        if not self.settings.cka_search:
            return []
        return list(itertools.combinations(self.settings.data_seeds, 2))


#: Replicates beyond this are a typo (a range written out), not a design: planning them alone would take minutes.
MAX_DATA_SEEDS = 1000


def planned_levels(config: LotteryConfig) -> list[int]:
    """The levels a search will have: 0 and one per round (see :func:`planned_rounds`)."""
    return list(range(planned_rounds(config) + 1))


# ----------------------------------------------------------------------------------------------
# Reading a study file


def resolve_study(name_or_path: str | Path) -> Path:
    """A study file's path, or the shipped study of that name (``quickstart``, ``cpu-digits``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name_or_path}.toml"
    if shipped.is_file() and path.suffix == "":
        return shipped
    raise UserError(
        f"study file {path} does not exist; give a path, or the name of a shipped study: {', '.join(shipped_studies(SHIPPED))}"
    )


def load_study(path: str | Path) -> Study:
    """Read and check a study file; every problem is one line naming the field."""
    path = resolve_study(path)
    raw = read_config_file(path)
    unknown = [key for key in raw if key not in STUDY_FILE_TABLES]
    if unknown:
        raise UserError(
            f"{path}: unknown table [{unknown[0]}]; a study file holds {', '.join(f'[{t}]' for t in STUDY_FILE_TABLES)}"
        )
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise UserError(f"{path}: {key} must be a table ([{key}] with settings under it)")
    if "study" not in raw:
        raise UserError(
            f"{path} has no [study] table: it is a config file, not a study (give it to find-ticket "
            "--config), or add [study] with a name and data_seeds"
        )
    settings = StudySettings()
    study_table = dict(raw["study"])
    compare_with = study_table.pop("compare_with", None)  # a table of its own: checked once the searches are known
    apply_overrides(settings, study_table, source=str(path))
    check_config(settings)
    _check_folder_name(path, "study.name", settings.name)  # the default --out is runs/NAME
    seeds = list(settings.data_seeds)
    if len(seeds) > MAX_DATA_SEEDS:
        raise UserError(
            f"{path}: study.data_seeds lists {len(seeds):,} seeds, each a replicate of every search and control; "
            f"list at most {MAX_DATA_SEEDS:,} (split a larger design into several studies)"
        )
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: study.data_seeds must list distinct seeds, got {seeds}")

    run_values = {f"{section}.{k}": v for section in RUN_SECTIONS for k, v in raw.get(section, {}).items()}
    probe = LotteryConfig()
    apply_overrides(probe, run_values, source=str(path))

    searches_raw = raw.get("searches") or {}
    if not searches_raw:
        raise UserError(
            f"{path} declares no search: add a [searches.NAME] table with a strategy ({', '.join(STRATEGIES)})"
        )
    searches: dict[str, dict] = {}
    for name, table in searches_raw.items():
        where = f"searches.{name}"
        if not isinstance(table, dict):
            raise UserError(f"{path}: [{where}] must be a table of settings")
        _check_folder_name(path, "search name", name)
        values = _flatten(table)
        strategy = values.get("strategy", values.get("prune.strategy", probe.prune.strategy))
        if strategy not in STRATEGIES:
            raise UserError(
                f"{path}: {where}.strategy is {strategy!r}, which is not a search strategy; choose one "
                f"of {', '.join(STRATEGIES)} (controls go in [controls])"
            )
        for key in values:
            if key.split(".")[-1] in ("control_of", "reinit", "dense_from", "seed_data"):
                raise UserError(
                    f"{path}: {where}.{key} is set by the study itself (controls in [controls], seeds "
                    "in study.data_seeds); remove it"
                )
        config = copy.deepcopy(probe)
        apply_overrides(config, values, source=f"{path} [{where}]")
        try:
            validate(config)  # what the search itself checks first: a dry run must refuse what the run would
        except UserError as exc:
            raise UserError(f"{path} [{where}]: {exc}") from None
        searches[name] = values

    controls: dict[str, list[str]] = {}
    for control, sources in (raw.get("controls") or {}).items():
        if control not in CONTROLS:
            raise UserError(f"{path}: controls.{control} is not a control; choose from {', '.join(CONTROLS)}")
        sources = [sources] if isinstance(sources, str) else sources
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise UserError(f'{path}: controls.{control} must list search names, e.g. {control} = ["unified"]')
        for source in sources:
            if source not in searches:
                raise UserError(
                    f"{path}: controls.{control} names search {source!r}, which the study does not "
                    f"declare; declared: {', '.join(searches)}"
                )
        controls[control] = list(sources)
    outside = [s for s in settings.inception_seeds if s not in seeds]
    if outside:
        raise UserError(f"{path}: study.inception_seeds lists {outside[0]}, which is not in study.data_seeds {seeds}")
    if settings.cka_search:
        if settings.cka_search not in searches:
            raise UserError(
                f"{path}: study.cka_search names {settings.cka_search!r}, which the study does not "
                f"declare; declared: {', '.join(searches)}"
            )
        strategy = LotteryConfig()
        apply_overrides(strategy, {**run_values, **searches[settings.cka_search]}, source=str(path))
        if STRATEGIES[strategy.prune.strategy].imposes_profile:
            raise UserError(
                f"{path}: study.cka_search {settings.cka_search!r} uses {strategy.prune.strategy}, which "
                "imposes the upstream/downstream profile CKA is meant to motivate; pair tickets of a "
                "search that imposes none (unified or global)"
            )
        if len(seeds) < 2:
            raise UserError(
                f"{path}: study.cka_search compares tickets of two data seeds; list at least two in study.data_seeds"
            )

    evaluation = EvalConfig()
    apply_overrides(
        evaluation,
        {
            f"{s}.{k}": v
            for s in EVAL_SECTIONS
            for k, v in raw.get(s, {}).items()
            if not (s == "runtime" and k not in ("device",))
        },
        source=str(path),
    )
    check_config(evaluation)
    if "inception" in evaluation.measures:
        # evaluation comes after every ticket is trained: refuse now rather than hours later
        check_sample_counts(evaluation.num_samples, evaluation.reference_samples, evaluation.kid_subset_size)
    cka = CkaConfig()
    apply_overrides(cka, raw.get("cka", {}), source=str(path))
    check_config(cka)
    return Study(
        path,
        settings,
        run_values,
        searches,
        controls,
        evaluation,
        cka,
        _frontier_config(path, settings, searches, evaluation, raw.get("frontier")),
        read_reference(path, compare_with, searches),
    )


def _check_folder_name(path: Path, what: str, name: str) -> None:
    """A name that becomes a folder: letters, digits, - or _, so it stays one folder inside the study's."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"{path}: {what} {name!r} must be letters, digits, - or _ (it names folders)")


def _frontier_config(
    path: Path, settings: StudySettings, searches: dict, evaluation: EvalConfig, table: dict | None
) -> FrontierConfig | None:
    """The frontier a study draws: its [frontier] table, measured with the study's own protocol."""
    if not settings.frontier_search:
        if table:
            raise UserError(f"{path}: a [frontier] table needs study.frontier_search (the search it is drawn for)")
        return None
    if settings.frontier_search not in searches:
        raise UserError(
            f"{path}: study.frontier_search names {settings.frontier_search!r}, which the study does not "
            f"declare; declared: {', '.join(searches)}"
        )
    sampled = [m for m in evaluation.measures if m != "loss"]
    if not sampled:
        raise UserError(
            f"{path}: the frontier compares samplers, so [eval].measures needs domain or inception "
            "(the held-out loss does not sample)"
        )
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


__all__ = [
    "SHIPPED",
    "PlannedRun",
    "Study",
    "load_study",
    "planned_levels",
    "resolve_study",
    "shipped_studies",
]
