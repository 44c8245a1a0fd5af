"""Levels against levels: the comparison every question of the findings is made of.

A level of one run against a level of another, measure by measure, over the data seeds both have
(:func:`compare_levels`), and question (a)'s reading of a search's levels against its dense model
(:func:`sparsest_against_dense`), over the seeds together or for each seed alone (:func:`per_seed`, which
the boundaries of :mod:`ddpm_lottery.findings.scale` are made of).
"""

from __future__ import annotations

from ddpm_lottery.findings.collect import Collection, record_of
from ddpm_lottery.measures.stats import Difference, paired_difference
from ddpm_lottery.runs.run import Run


def level_sparsity(run: Run, index: int) -> float:
    return run.level(index).metrics()["sparsity"]


def pruned_levels(by_seed: dict[int, Run]) -> list[int]:
    levels = set()
    for run in by_seed.values():
        levels |= {i for i in run.finished_levels() if i > 0}
    return sorted(levels)


def compare_levels(
    collection: Collection,
    protocols: dict[str, str],
    first: dict[int, Run],
    first_level,
    second: dict[int, Run],
    second_level,
) -> dict[str, Difference | None]:
    out = {}
    for measure, key in protocols.items():
        pairs = []
        for seed, run in first.items():
            if seed not in second:
                continue
            a = record_of(run, first_level, key)
            b = record_of(second[seed], second_level, key)
            pairs.append((a, b))
        out[measure] = paired_difference(pairs, collection.confidence)
    return out


def sparsest_against_dense(levels: list[tuple[int, float, dict[str, Difference | None]]]) -> dict:
    """(a) for one search, from its levels' (index, sparsity, differences against the dense model).

    The answer is the sparsest level that no measure finds worse, below the first level some measure
    does: each level is pruned from the one before, so a sparser level escaping a worse verdict after
    that escapes it by the width of its intervals (a strategy that collapses on some seeds only).  "Not
    worse" is only the absence of a worse verdict, which wide intervals also give, so the sparsest level
    that some measure finds better (and none worse) is given beside it.
    """
    best, better, measured, worse = None, None, False, None
    for index, sparsity, differences in sorted(levels, key=lambda level: level[1]):
        verdicts = [d.verdict() for d in differences.values() if d is not None]
        measured = measured or bool(verdicts)
        if "worse" in verdicts:
            worse = (index, sparsity)
            break
        if verdicts:
            best = (index, sparsity, differences)
            if "better" in verdicts:
                better = (index, sparsity)
    return {
        "measured": measured,
        "sparsest_not_worse": None
        if best is None
        else {
            "level": best[0],
            "sparsity": best[1],
            "measures": {m: d.as_dict() for m, d in best[2].items() if d is not None},
        },
        "sparsest_better": None if better is None else {"level": better[0], "sparsity": better[1]},
        # the level that ended the search for (a): the boundary lies between it and sparsest_not_worse
        "first_worse": None if worse is None else {"level": worse[0], "sparsity": worse[1]},
    }


def per_seed(collection: Collection, protocols: dict[str, str], search: str) -> dict[str, dict]:
    """(a) for each data seed of ``search`` alone, by that seed's paired bootstrap over images: the
    boundaries of (e) and (f) are per seed, so that searches with different numbers of seeds (a t
    interval over two seeds is some twelve standard errors wide) compare like with like."""
    dense = collection.dense_for(search)
    out = {}
    for seed, run in collection.searches[search].items():
        levels = [
            (index, level_sparsity(run, index), compare_levels(collection, protocols, {seed: run}, index, dense, 0))
            for index in pruned_levels({seed: run})
        ]
        out[str(seed)] = sparsest_against_dense(levels)
    return out


__all__ = ["compare_levels", "level_sparsity", "per_seed", "pruned_levels", "sparsest_against_dense"]
