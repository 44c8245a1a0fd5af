"""The findings: the paper's questions answered from stored measurements, each with its interval.

(a) the sparsest level of each search whose quality is not worse than the dense model's, below the first
    level found worse (and, when no measure separates it from the dense model either way, the sparsest one
    some measure finds better);
(b) ``varying`` against the searches that impose no profile (``unified``, ``global``) at matched sparsity;
(c) each ticket against its random re-init and random-mask controls at each sparsity;
(d) CKA of two tickets above its baseline, upstream half against downstream half, and ``varying``
    against ``varying --order reverse``;
(e) and (f), where a study varies the network's width or the pruning rate: how the boundary of (a) moves
    (:mod:`ddpm_lottery.findings.scale`), and (e) by a law fitted to every level of every width
    (:mod:`ddpm_lottery.findings.scaling_law`);
(g) and (h), where a study declares another study's search to compare with, or has a class-conditional
    search: the boundary against that other network's, and against the unconditional one's
    (:mod:`ddpm_lottery.findings.comparisons`).

Every comparison is a :class:`~ddpm_lottery.measures.stats.Difference` with an interval and a verdict
(:mod:`ddpm_lottery.measures.stats` says how the intervals are made); the runs come from
:func:`ddpm_lottery.findings.collect.collect`, and :mod:`ddpm_lottery.findings.render` writes the answers.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from ddpm_lottery.findings.collect import Collection, chosen_protocols, record_of
from ddpm_lottery.findings.comparisons import comparison_findings
from ddpm_lottery.findings.levels import compare_levels, level_sparsity, per_seed, pruned_levels, sparsest_against_dense
from ddpm_lottery.findings.scale import scale_findings, surviving_curves
from ddpm_lottery.findings.scaling_law import law_findings
from ddpm_lottery.measures.cka import CKA_KINDS, half_means, read_csv
from ddpm_lottery.measures.stats import NOT_SEPARABLE, Difference, pairwise_interval, seed_mean
from ddpm_lottery.pruning.strategies import STRATEGIES
from ddpm_lottery.utils.errors import UserError


def _row(question, comparison, sparsity, differences: dict[str, Difference | None], extra=None) -> dict:
    return {
        "question": question,
        "comparison": comparison,
        "sparsity": sparsity,
        "measures": {m: d.as_dict() for m, d in differences.items() if d is not None},
        **(extra or {}),
    }


def profile_comparisons(collection: Collection, protocols: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """(b) ``varying`` against the searches on its network that impose no profile, and (d) ``varying``
    forward against ``--order reverse``, level by level where both reach the same sparsity.

    Returns the rows and the pairs that were measured but share no sparsity (``unpaired``): under the
    paper's own p + j*q, ``varying`` prunes more a round than p alone, so its levels fall between the
    other search's and no level pair compares them; the boundaries of (f) do.
    """
    rows: list[dict] = []
    unpaired: list[dict] = []
    strategies = collection.strategies
    varying = [s for s, (strategy, _) in strategies.items() if STRATEGIES[strategy].imposes_profile]
    plain = [s for s, (strategy, _) in strategies.items() if not STRATEGIES[strategy].imposes_profile]
    for first in varying:
        others = plain + [
            s for s in varying if s != first and strategies[first][1] == "forward" and strategies[s][1] == "reverse"
        ]
        for second in (s for s in others if collection.same_network(first, s)):
            question = "d" if second in varying else "b"
            a, b = collection.searches[first], collection.searches[second]
            paired = False
            for index in pruned_levels(a):
                common = {
                    s: r
                    for s, r in a.items()
                    if s in b
                    and index in r.finished_levels()
                    and index in b[s].finished_levels()
                    and abs(level_sparsity(r, index) - level_sparsity(b[s], index)) < 1e-3
                }
                if not common:
                    continue
                paired = True
                differences = compare_levels(collection, protocols, common, index, b, index)
                rows.append(
                    _row(
                        question, f"{first} − {second}", level_sparsity(next(iter(common.values())), index), differences
                    )
                )
            if not paired and pruned_levels(a) and pruned_levels(b):
                unpaired.append({"question": question, "first": first, "second": second})
    return rows, unpaired


def findings(collection: Collection) -> dict:
    protocols = chosen_protocols(collection)
    rows: list[dict] = []
    summary_a = []
    # (a) against the dense model
    for search, by_seed in collection.searches.items():
        levels = []
        for index in pruned_levels(by_seed):
            seeds = {s: r for s, r in by_seed.items() if index in r.finished_levels()}
            sparsity = level_sparsity(next(iter(seeds.values())), index)
            differences = compare_levels(collection, protocols, seeds, index, collection.dense_for(search), 0)
            rows.append(_row("a", f"{search} − dense", sparsity, differences))
            levels.append((index, sparsity, differences))
        summary_a.append(
            {"search": search, **sparsest_against_dense(levels), "per_seed": per_seed(collection, protocols, search)}
        )
    profile_rows, unpaired = profile_comparisons(collection, protocols)
    rows += profile_rows
    # (c) tickets against their controls
    for (search, control), by_seed in collection.controls.items():
        for index in pruned_levels(by_seed):
            tickets = {s: r for s, r in collection.searches.get(search, {}).items() if index in r.finished_levels()}
            if not tickets:
                continue
            differences = compare_levels(collection, protocols, tickets, index, by_seed, index)
            rows.append(
                _row(
                    "c",
                    f"{search} − {control} control",
                    level_sparsity(next(iter(by_seed.values())), index),
                    differences,
                )
            )
    cka = cka_findings(collection)
    labels = {}
    for measure, key in protocols.items():
        for by_seed in collection.searches.values():
            for run in by_seed.values():
                for index in run.finished_levels():
                    record = record_of(run, index, key)
                    if record:
                        labels[measure] = record["label"]
    seeds = sorted({s for by_seed in collection.searches.values() for s in by_seed})
    scale = scale_findings(collection, summary_a)
    scale["law"] = law_findings(collection, protocols, scale["boundaries"]) if scale["widths"] else []
    return {
        "root": str(collection.root),
        "confidence": collection.confidence,
        "protocols": protocols,
        "notes": collection.notes,
        "compute": compute_spent(collection, protocols),
        "protocol_labels": labels,
        "seeds": seeds,
        "rows": rows,
        "unpaired": unpaired,
        "sparsest_not_worse": summary_a,
        "cka": cka,
        "curves": quality_curves(collection, protocols),
        "scale": scale,
        "surviving_curves": surviving_curves(collection, protocols, scale["widths"]),
        "comparisons": comparison_findings(collection, protocols),
    }


def quality_curves(collection: Collection, protocols: dict[str, str]) -> dict[str, dict]:
    """Per measure: each search's and control's mean over seeds at each level, and the dense model's.

    A point is (sparsity, mean, low, high, seeds): a t interval over the seeds, or with one seed its bootstrap
    interval over the images."""
    out = {}
    groups = [(name, by_seed) for name, by_seed in collection.searches.items()]
    groups += [(f"{search} {control} control", by_seed) for (search, control), by_seed in collection.controls.items()]
    for measure, key in protocols.items():
        curves = {}
        seeds_used = set()  # how many seeds each point averages: 1 means a bootstrap interval, more a t interval
        for name, by_seed in groups:
            points = []
            for index in pruned_levels(by_seed):
                records = [record_of(r, index, key) for r in by_seed.values()]
                stats = seed_mean(records, collection.confidence)
                if stats is not None:
                    count = sum(r is not None for r in records)
                    points.append(
                        (
                            level_sparsity(next(r for r in by_seed.values() if index in r.finished_levels()), index),
                            *stats,
                            count,
                        )
                    )
                    seeds_used.add(count)
            if points:
                curves[name] = points
        records = [record_of(r, 0, key) for r in collection.dense.values()]
        dense = seed_mean(records, collection.confidence)
        dense_seeds = sum(r is not None for r in records)
        if dense is not None:
            seeds_used.add(dense_seeds)
        # a search of another network (a width study) has its own dense model: its own row and line
        own_dense = {}
        for search in collection.searches:
            runs = collection.dense_for(search)
            if collection.same_network(search, next(iter(collection.searches))):
                continue
            own = [record_of(r, 0, key) for r in runs.values()]
            stats = seed_mean(own, collection.confidence)
            if stats is not None:
                own_dense[f"{search} dense"] = (*stats, sum(r is not None for r in own))
        out[measure] = {
            "curves": curves,
            "dense": dense,
            "dense_seeds": dense_seeds,
            "other_dense": own_dense,
            "seeds_per_point": sorted(seeds_used),
        }
    return out


def compute_spent(collection: Collection, protocols: dict[str, str]) -> dict:
    """Seconds spent on the stored results, summed from the records: training per level (summed over the
    sessions a level was resumed in), each measure of the findings' protocols, and ``other`` evaluations
    (other samplers or N, e.g. an efficiency frontier's). ``devices`` are the ones the measurements name (a
    level's metrics do not record where it trained).

    A study runs across sessions, perhaps in several processes at once, so these sums are the work it took;
    ``wall_s`` is the time anything of it was running: the union of its training stretches (from the
    training logs' timestamps; a pause of over ten minutes between two log lines is not counted) and of its
    evaluations."""
    runs = [r for by_seed in collection.searches.values() for r in by_seed.values()]
    runs += [r for by_seed in collection.controls.values() for r in by_seed.values()]
    keys = {key: measure for measure, key in protocols.items()}
    seconds = {"training": 0.0}
    levels, devices, busy = 0, set(), []
    for run in runs:
        for index in run.finished_levels():
            level = run.level(index)
            metrics = level.metrics()
            if "copied_from" not in metrics:  # a reused dense model was paid for once, by the run that trained it
                seconds["training"] += float(metrics.get("wall_time_s") or 0.0)
                levels += 1
                busy += _training_stretches(level)
            for record in level.evaluations():
                if "measure" in record and record.get("wall_time_s") is not None:
                    kind = keys.get(record.get("key"), "other")
                    seconds[kind] = seconds.get(kind, 0.0) + float(record["wall_time_s"])
                    devices.add(record.get("device", "?"))
                    if record.get("time"):
                        busy.append((float(record["time"]) - float(record["wall_time_s"]), float(record["time"])))
    if "other" in seconds:  # last, after the findings' own measures
        seconds["other"] = seconds.pop("other")
    return {
        "seconds": seconds,
        "total_s": sum(seconds.values()),
        "wall_s": _union_length(busy),
        "levels": levels,
        "runs": len(runs),
        "devices": sorted(str(d) for d in devices),
    }


def _training_stretches(level, gap_s: float = 600.0) -> list[tuple[float, float]]:
    """The stretches a level's training ran, from its log's timestamps (a resumed level has several)."""
    times = sorted(float(line["time"]) for line in level.training_log() if "time" in line)
    return [(a, b) for a, b in itertools.pairwise(times) if b - a <= gap_s]


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def upstream_gaps(
    pairs: list[tuple[dict, list[dict]]], kind: str, blocks_only: bool = False
) -> list[tuple[str, str, float]]:
    """Per ticket pair (its summary and cka.csv rows): its CKA above baseline, upstream half − downstream half
    (nan pairs left out). A ticket is named by its run folder: the stored paths depend on where each process ran
    from."""
    gaps = []
    for summary, rows in pairs:
        halves = half_means(rows, f"above_{kind}", blocks_only)
        gaps.append(
            (Path(summary["run_a"]).name, Path(summary["run_b"]).name, halves["upstream"] - halves["downstream"])
        )
    return [g for g in gaps if not math.isnan(g[2])]


def cka_findings(collection: Collection) -> list[dict]:
    """(d): per level, CKA kind and layer scope (every layer, or the U-Net's blocks without its stem), upstream
    minus downstream of the tickets' CKA above its baseline."""
    by_level: dict[str, list[tuple[dict, list[dict]]]] = {}
    for folder in collection.cka:
        summary = folder.read_summary()
        if "halves" in summary:
            try:
                rows = read_csv(folder.table)
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(
                    f"CKA table {folder.table} is unreadable ({exc}); delete {folder.dir} and re-run the "
                    "command that wrote it"
                ) from None
            by_level.setdefault(folder.dir.name, []).append((summary, rows))
    out = []
    for level, pairs in sorted(by_level.items()):
        for kind in CKA_KINDS:
            for blocks_only in (False, True):
                gaps = upstream_gaps(pairs, kind, blocks_only)
                if not gaps:
                    continue
                mean, low, high = pairwise_interval(gaps, collection.confidence)
                verdict = (
                    "upstream more similar" if low > 0 else "downstream more similar" if high < 0 else NOT_SEPARABLE
                )
                raw = [half_means(rows, kind, blocks_only) for _, rows in pairs]
                base = [half_means(rows, f"masked_{kind}", blocks_only) for _, rows in pairs]
                out.append(
                    {
                        "level": int(level.split("_")[-1]),
                        "kind": kind,
                        "layers": "blocks" if blocks_only else "all",
                        "pairs": len(gaps),
                        "tickets_compared": len({run for a, b, _ in gaps for run in (a, b)}),
                        "sparsity": pairs[0][0]["sparsity"][0],
                        "gap": mean,
                        "interval": [low, high],
                        "verdict": verdict,
                        "tickets": {h: float(np.nanmean([r[h] for r in raw])) for h in ("upstream", "downstream")},
                        "baseline": {h: float(np.nanmean([b[h] for b in base])) for h in ("upstream", "downstream")},
                    }
                )
    return out


__all__ = [
    "cka_findings",
    "compare_levels",
    "compute_spent",
    "findings",
    "quality_curves",
    "sparsest_against_dense",
    "upstream_gaps",
]
