"""The runs behind the findings: a study folder (or a single run folder) read into a :class:`Collection`.

A study's searches, controls and dense models by role and data seed, as its ``study.json`` declares them
(a single run's branches are its controls), and the lookups the questions make on the stored records: the
protocol compared per measure and one level's record of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ddpm_lottery.pruning.strategies import STRATEGIES
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.records import StudyRecord, read_record
from ddpm_lottery.runs.run import Run


@dataclass
class Collection:
    """The runs behind the findings, by role and data seed."""

    root: Path
    searches: dict[str, dict[int, Run]]
    strategies: dict[str, tuple[str, str]]  # search -> (strategy, order)
    controls: dict[tuple[str, str], dict[int, Run]]  # (search, control) -> seed -> run
    dense: dict[int, Run]  # seed -> the run whose level 0 is the first search's dense model
    cka: list = field(default_factory=list)  # CkaFolders holding a summary with baselines
    confidence: float = 0.95
    notes: dict = field(default_factory=dict)  # the study's description, cka_search, decided_by
    # search -> seed -> the run that trained that search's dense model (a width study has one per width)
    dense_of: dict[str, dict[int, Run]] = field(default_factory=dict)

    def dense_for(self, search: str) -> dict[int, Run]:
        return self.dense_of.get(search) or self.dense

    def same_network(self, first: str, second: str) -> bool:
        """Whether two searches prune the same dense model (levels of different networks are not paired)."""
        a, b = self.dense_for(first), self.dense_for(second)
        return all(a[s].root == b[s].root for s in a.keys() & b.keys())


def _dense_run(folder: StudyFolder, run: Run) -> Run:
    """The run whose level 0 ``run`` starts from: the one it copied its dense model from, else itself."""
    if 0 not in run.finished_levels():
        return run
    copied = run.level(0).metrics().get("copied_from")
    source = folder.run_path(Path(copied).name) if copied else None
    return Run.open(source) if source is not None and Run.is_run(source) else run


def collect(path: str | Path) -> Collection:
    """A study folder (``study.json``) or a single run folder (its branches are its controls)."""
    path = Path(path)
    folder = StudyFolder(path)
    if folder.is_study():
        stored = read_record(folder.record, StudyRecord, "study record", "re-run the study's command to rewrite it")
        declaration = stored["declaration"]
        searches, strategies, controls, dense, dense_of = {}, {}, {}, {}, {}
        first = next(iter(declaration["searches"]))
        for seed in declaration["data_seeds"]:
            for search, _values in declaration["searches"].items():
                run_path = folder.run_path(f"{search}-seed{seed}")
                if Run.is_run(run_path):
                    run = Run.open(run_path)
                    searches.setdefault(search, {})[seed] = run
                    strategies[search] = (run.config.prune.strategy, run.config.prune.order)
                    if search == first:
                        dense[seed] = run
                    dense_of.setdefault(search, {})[seed] = _dense_run(folder, run)
                for control, sources in declaration["controls"].items():
                    branch = folder.run_path(f"{search}-seed{seed}-{control}")
                    if search in sources and Run.is_run(branch):
                        controls.setdefault((search, control), {})[seed] = Run.open(branch)
        declared_strategies = {
            values.get("strategy", values.get("prune.strategy", "")) for values in declaration["searches"].values()
        }
        notes = {
            **stored.get("notes", {}),
            "declares": {
                "b": any(STRATEGIES[s].imposes_profile for s in declared_strategies if s in STRATEGIES)
                and any(not STRATEGIES[s].imposes_profile for s in declared_strategies if s in STRATEGIES),
                "c": bool(declaration["controls"]),
                "d": bool(stored.get("notes", {}).get("cka_search")),
            },
        }
        return Collection(
            path, searches, strategies, controls, dense, folder.cka_folders(), notes=notes, dense_of=dense_of
        )
    run = Run.open(path)
    name = run.root.name
    controls = {}
    for branch in run.branches():
        controls[(name, branch.kind.removeprefix("control-"))] = {0: branch}
    return Collection(
        path, {name: {0: run}}, {name: (run.config.prune.strategy, run.config.prune.order)}, controls, {0: run}
    )


def chosen_protocols(collection: Collection) -> dict[str, str]:
    """Per measure, the stored protocol that covers the most levels (only it is compared)."""
    coverage: dict[str, dict[str, int]] = {}
    runs = [r for by_seed in collection.searches.values() for r in by_seed.values()]
    runs += [r for by_seed in collection.controls.values() for r in by_seed.values()]
    for run in runs:
        for index in run.finished_levels():
            for record in run.level(index).evaluations():
                if "measure" in record:
                    per = coverage.setdefault(record["measure"], {})
                    per[record["key"]] = per.get(record["key"], 0) + 1
    return {m: max(sorted(keys), key=lambda k: keys[k]) for m, keys in coverage.items()}


def record_of(run: Run, index: int, key: str) -> dict | None:
    if index not in run.finished_levels():
        return None
    return next((r for r in run.level(index).evaluations() if r["key"] == key), None)


__all__ = ["Collection", "chosen_protocols", "collect", "record_of"]
