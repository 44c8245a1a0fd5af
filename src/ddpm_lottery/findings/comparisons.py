"""(g) and (h): a search's boundary against another network's, and against its class-conditional twin.

Both compare boundaries as (e) and (f) do (:mod:`ddpm_lottery.findings.scale`): each search against its
own dense model, each data seed by its own paired bootstrap over images, the search's bracket the hull of
its seeds', and two brackets ordered only when they do not overlap.  Here the brackets are drawn by each
measure alone as well as by every measure together, because the two sides need not have the same
measures: only a measure both sides have counts, and the joint bracket is drawn over those alone.

- **(g) another study's network**: a study may declare ``compare_with`` (its study file's ``[study]``
  table): a search of another, finished study folder, whose stored runs are read as they are (sealed and
  verified by the same readers, never written) and whose boundary is set beside the boundary of this
  study's search ``against``: a DiT against the 2x U-Net of ``cpu-widths`` at a like size, say.  The
  networks may differ in family and in training budget, which the finding names, since a boundary moves
  with either.
- **(h) conditioning**: each class-conditional search against the unconditional searches of the same
  strategy, order and rate on the same preset, over the measures both have; and the conditional search's
  class accuracy (1 − the stored error rate) at each level, beside its dense model's.  An unconditional
  model has no class accuracy to compare: its samples match the class asked for by chance alone.
"""

from __future__ import annotations

from pathlib import Path

from ddpm_lottery.findings.collect import Collection, chosen_protocols, collect, record_of
from ddpm_lottery.findings.levels import compare_levels, level_sparsity, per_seed, pruned_levels
from ddpm_lottery.findings.scale import boundary, bracket_order
from ddpm_lottery.measures.stats import seed_mean
from ddpm_lottery.models.networks import network_family
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError

#: The joint bracket's name among the measures: every measure both sides have, together.
EVERY = "every"
ACCURACY = "class-accuracy"


# ----------------------------------------------------------------------------------------------
# The reference study of (g)


def reference_root(root: Path, declared: dict) -> Path:
    """The folder ``compare_with.study`` names, relative to the study folder ``root``; one line if it is
    missing or holds no study."""
    folder = (Path(root) / declared["study"]).resolve()
    where = f"study.compare_with.study {declared['study']!r} of {root}"
    if not folder.is_dir():
        raise UserError(
            f"{where} names {folder}, which does not exist; put that study's folder there (its runs are read, "
            "not retrained), or remove compare_with from the study file"
        )
    if not StudyFolder(folder).is_study():
        raise UserError(
            f"{where} names {folder}, which is not a study folder (no study.json); give the --out folder of "
            "`ddpm-lottery study`"
        )
    if folder == Path(root).resolve():
        raise UserError(f"{where} names the study's own folder; give another study's folder")
    return folder


def reference_collection(root: Path, declared: dict) -> Collection:
    """The other study's runs, read (and verified) as the findings of that study read them."""
    folder = reference_root(root, declared)
    reference = collect(folder)
    if declared["search"] not in reference.searches:
        raise UserError(
            f"study.compare_with.search {declared['search']!r} of {root}: {folder} has no runs of that search; "
            f"its searches with runs: {', '.join(reference.searches) or 'none'}"
        )
    return reference


# ----------------------------------------------------------------------------------------------
# Boundaries by measure


def measure_boundaries(collection: Collection, protocols: dict[str, str], search: str) -> dict[str, dict | None]:
    """A search's boundary by each measure of ``protocols`` alone, and by all of them together (``EVERY``):
    None where that measure has no record of the search."""
    out = {}
    for measure, key in protocols.items():
        out[measure] = boundary(collection, search, {"per_seed": per_seed(collection, {measure: key}, search)})
    out[EVERY] = boundary(collection, search, {"per_seed": per_seed(collection, protocols, search)})
    return out


def _measured(collection: Collection, protocols: dict[str, str], search: str) -> dict[str, str]:
    """The protocols with a record at some level of ``search`` (class accuracy measures conditional runs only)."""
    runs = list(collection.searches[search].values()) + list(collection.dense_for(search).values())
    return {
        measure: key
        for measure, key in protocols.items()
        if any(record_of(run, index, key) for run in runs for index in run.finished_levels())
    }


def compare_boundaries(
    first: tuple[Collection, dict[str, str], str], second: tuple[Collection, dict[str, str], str]
) -> dict:
    """Two searches' boundaries, (collection, protocols, search) each, by every measure both have: where
    ``second``'s bracket sits against ``first``'s, in sparsity and in surviving prunable weights."""
    first_protocols = _measured(*first)
    second_protocols = _measured(*second)
    shared = [m for m in first_protocols if m in second_protocols]
    if not shared:
        return {"measures": [], "by_measure": {}}
    a = measure_boundaries(first[0], {m: first_protocols[m] for m in shared}, first[2])
    b = measure_boundaries(second[0], {m: second_protocols[m] for m in shared}, second[2])
    by_measure = {}
    for measure in (*shared, EVERY):
        if a[measure] is None or b[measure] is None:
            continue
        by_measure[measure] = {
            "first": a[measure],
            "second": b[measure],
            "sparsity": bracket_order(a[measure]["sparsity_bracket"], b[measure]["sparsity_bracket"]),
            "surviving": bracket_order(a[measure]["surviving_bracket"], b[measure]["surviving_bracket"]),
        }
    return {"measures": shared, "by_measure": by_measure}


def _first_run(collection: Collection, search: str) -> Run:
    return next(iter(collection.searches[search].values()))


def budget(collection: Collection, search: str) -> dict:
    """What a level of ``search`` trained for, from its run's stored config."""
    train = _first_run(collection, search).config.train
    return {"steps": train.steps, "lr": train.lr, "batch_size": train.batch_size}


def _label(collection: Collection, search: str, key: str) -> str:
    for run in collection.searches[search].values():
        for index in run.finished_levels():
            record = record_of(run, index, key)
            if record:
                return record.get("label", key)
    return key


def reference_finding(collection: Collection, protocols: dict[str, str]) -> dict | None:
    """(g): this study's search ``against`` beside the other study's ``search``; None unless declared."""
    declared = collection.notes.get("compare_with")
    if not declared:
        return None
    against = declared["against"]
    try:
        reference = reference_collection(collection.root, declared)
    except UserError as missing:  # the other study is not beside this one (yet): (g) says so, the rest stands
        return {**declared, "missing": str(missing)}
    if against not in collection.searches:  # a study just begun: nothing of it to compare yet
        return {**declared, "root": str(reference.root), "pending": True}
    search = declared["search"]
    reference_protocols = chosen_protocols(reference)
    compared = compare_boundaries((reference, reference_protocols, search), (collection, protocols, against))
    return {
        "study": declared["study"],
        "root": str(reference.root),
        "search": search,
        "against": against,
        "families": {
            "reference": network_family(_first_run(reference, search).config.model).name,
            "this": network_family(_first_run(collection, against).config.model).name,
        },
        "budgets": {"reference": budget(reference, search), "this": budget(collection, against)},
        "protocols": {
            m: [_label(collection, against, protocols[m]), _label(reference, search, reference_protocols[m])]
            for m in compared["measures"]
        },
        "only_here": sorted(set(_measured(collection, protocols, against)) - set(compared["measures"])),
        **compared,
    }


# ----------------------------------------------------------------------------------------------
# Conditioning (h)


def _model(collection: Collection, search: str):
    return _first_run(collection, search).config.model


def conditioning_pairs(collection: Collection) -> list[tuple[str, str]]:
    """(conditional, unconditional) searches that differ in conditioning alone: strategy, order, rate and
    preset alike."""

    def kind(search):
        run = _first_run(collection, search)
        prune = run.config.prune
        return (*collection.strategies[search], prune.prune_ratio, prune.ratio_increment, run.config.model.preset)

    conditional = [s for s in collection.searches if _model(collection, s).class_conditional]
    plain = [s for s in collection.searches if not _model(collection, s).class_conditional]
    return [(c, p) for c in conditional for p in plain if kind(c) == kind(p)]


def accuracy_table(collection: Collection, key: str, search: str) -> list[dict]:
    """The class accuracy of ``search`` at each level (its dense model first): 1 − the stored error rate,
    mean over the data seeds with its interval, and the difference from the dense model (level − dense, so
    positive is more accurate) with its verdict."""
    dense = collection.dense_for(search)
    by_seed = collection.searches[search]
    rows = []
    for index in [0, *pruned_levels(by_seed)]:
        source = dense if index == 0 else {s: r for s, r in by_seed.items() if index in r.finished_levels()}
        records = [record_of(run, index, key) for run in source.values()]
        stats = seed_mean(records, collection.confidence)
        if stats is None:
            continue
        error, low, high = stats
        row = {
            "level": index,
            "sparsity": 0.0 if index == 0 else level_sparsity(next(iter(source.values())), index),
            "accuracy": 1 - error,
            "interval": [1 - high, 1 - low],
            "seeds": sum(r is not None for r in records),
            "against_dense": None,
        }
        if index > 0:
            difference = compare_levels(collection, {ACCURACY: key}, source, index, dense, 0)[ACCURACY]
            if difference is not None:  # the error's difference, turned into the accuracy's
                verdict = {"better": "more accurate", "worse": "less accurate"}.get(difference.verdict())
                row["against_dense"] = {
                    "difference": -difference.value,
                    "interval": [-difference.high, -difference.low],
                    "seeds": difference.seeds,
                    "verdict": verdict or difference.verdict(),
                }
        rows.append(row)
    return rows


def conditioning_findings(collection: Collection, protocols: dict[str, str]) -> list[dict]:
    """(h): per conditional search and its unconditional twin, the boundaries by the measures both have,
    and the conditional search's class accuracy by level."""
    out = []
    for conditional, plain in conditioning_pairs(collection):
        compared = compare_boundaries((collection, protocols, plain), (collection, protocols, conditional))
        seeds = [sorted(collection.searches[s]) for s in (plain, conditional)]
        classes = _model(collection, conditional).num_classes
        accuracy = protocols.get(ACCURACY)
        out.append(
            {
                "conditional": conditional,
                "unconditional": plain,
                "seeds": seeds,
                "chance": 1 / classes if classes else None,
                "accuracy": accuracy_table(collection, protocols[ACCURACY], conditional) if accuracy else [],
                # the conditional search's own boundary by class accuracy (the unconditional one has none)
                "accuracy_boundary": boundary(
                    collection, conditional, {"per_seed": per_seed(collection, {ACCURACY: accuracy}, conditional)}
                )
                if accuracy
                else None,
                **compared,
            }
        )
    return out


def comparison_findings(collection: Collection, protocols: dict[str, str]) -> dict:
    """(g) and (h); ``reference`` None and ``conditioning`` empty where the study asks neither."""
    return {
        "reference": reference_finding(collection, protocols),
        "conditioning": conditioning_findings(collection, protocols),
    }


__all__ = [
    "EVERY",
    "accuracy_table",
    "compare_boundaries",
    "comparison_findings",
    "conditioning_pairs",
    "measure_boundaries",
    "reference_collection",
    "reference_root",
]
