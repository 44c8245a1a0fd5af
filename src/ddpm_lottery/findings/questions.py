"""The findings: the paper's questions answered from stored measurements, each with its interval.

(a) the sparsest level of each search whose quality is not worse than the dense model's, below the first
    level found worse (and, when no measure separates it from the dense model either way, the sparsest one
    some measure finds better);
(b) ``varying`` against the searches that impose no profile (``unified``, ``global``) at matched sparsity;
(c) each ticket against its random re-init and random-mask controls at each sparsity;
(d) CKA of two tickets above its baseline, upstream half against downstream half, and ``varying``
    against ``varying --order reverse``.

Every comparison is a difference (first minus second; all measures are lower-is-better) with an
interval, and a verdict: "better" or "worse" when the interval excludes zero, else "not separable with
this N and these seeds".  With several data seeds the interval is a Student-t interval over the seeds'
paired differences (the seed-to-seed spread, which includes the sampling noise of each measurement);
with one seed it is the paired bootstrap over the generated (or held-out) images, which sees the
sampling noise only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import read_json, write_json, write_text
from ddpm_lottery.runs.folders import Run, StudyFolder

NOT_SEPARABLE = "not separable"
MEASURE_ORDER = ("domain", "loss", "inception")
LABELS = {"inception": "Inception FID", "domain": "domain FD", "loss": "held-out loss"}


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
        stored = read_json(folder.record, "study record")
        declaration = stored["declaration"]
        searches, strategies, controls, dense, dense_of = {}, {}, {}, {}, {}
        first = next(iter(declaration["searches"]))
        for seed in declaration["data_seeds"]:
            for search, values in declaration["searches"].items():
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
        from ddpm_lottery.pruning.masks import STRATEGIES

        declared_strategies = {values.get("strategy", values.get("prune.strategy", ""))
                               for values in declaration["searches"].values()}
        notes = {**stored.get("notes", {}), "declares": {
            "b": any(STRATEGIES[s].imposes_profile for s in declared_strategies if s in STRATEGIES)
            and any(not STRATEGIES[s].imposes_profile for s in declared_strategies if s in STRATEGIES),
            "c": bool(declaration["controls"]), "d": bool(stored.get("notes", {}).get("cka_search"))}}
        return Collection(path, searches, strategies, controls, dense, folder.cka_folders(), notes=notes,
                          dense_of=dense_of)
    run = Run.open(path)
    name = run.root.name
    controls = {}
    for branch in run.branches():
        controls[(name, branch.kind.removeprefix("control-"))] = {0: branch}
    return Collection(path, {name: {0: run}}, {name: (run.config.prune.strategy, run.config.prune.order)}, controls,
                      {0: run})


# ----------------------------------------------------------------------------------------------
# Values and differences


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


def t_interval(values: list[float], confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (at least two values)."""
    from scipy.stats import t

    mean = float(np.mean(values))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def pairwise_interval(gaps: list[tuple[str, str, float]], confidence: float) -> tuple[float, float, float]:
    """Mean and interval of a figure measured on pairs of tickets, ``(ticket_a, ticket_b, value)``.

    The pairs of s tickets share them (three data seeds give three pairs of three tickets), so a t
    interval over the pairs would count dependent values as independent ones. The replicate is the
    ticket: the jackknife over tickets (leave one ticket and every pair it is in out; the mean of
    pairwise values is a U-statistic) gives the variance, with s − 1 degrees of freedom. No interval
    when a ticket is in every pair (one pair, or a star of pairs): nothing is left to compare it by."""
    from scipy.stats import t

    mean = float(np.mean([value for _, _, value in gaps]))
    tickets = sorted({run for a, b, _ in gaps for run in (a, b)})
    left_out = [[value for a, b, value in gaps if ticket not in (a, b)] for ticket in tickets]
    if len(gaps) < 2 or not all(left_out):
        return mean, -math.inf, math.inf
    n = len(tickets)
    estimates = np.array([np.mean(values) for values in left_out])
    variance = (n - 1) / n * float(np.sum((estimates - estimates.mean()) ** 2))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(variance)
    return mean, mean - half, mean + half


@dataclass
class Difference:
    value: float
    low: float
    high: float
    seeds: int
    method: str
    # over several seeds: how many seeds' own paired bootstraps over images find the first better, and worse
    seeds_better: int = 0
    seeds_worse: int = 0

    def verdict(self) -> str:
        if self.high < 0:
            return "better"
        if self.low > 0:
            return "worse"
        return NOT_SEPARABLE

    def text(self, digits: int = 3) -> str:
        return f"{self.value:+.{digits}g} [{self.low:+.{digits}g}, {self.high:+.{digits}g}]"

    def as_dict(self) -> dict:
        return {"difference": self.value, "interval": [self.low, self.high], "seeds": self.seeds,
                "method": self.method, "verdict": self.verdict(), "seeds_better": self.seeds_better,
                "seeds_worse": self.seeds_worse}


def paired_difference(pairs: list[tuple[dict, dict]], confidence: float) -> Difference | None:
    """first − second over the seeds' record pairs; t over seeds, or the paired bootstrap for one seed."""
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    values = [a["value"] - b["value"] for a, b in pairs]
    mean = float(np.mean(values))
    if len(pairs) >= 2:
        # Each seed's own verdict, from the sampling noise alone: it cannot replace the t interval (it
        # ignores the spread from seed to seed), but it says when every seed points the same way and only
        # that spread keeps the interval open.
        own = [_seed_bootstrap(a, b, confidence) for a, b in pairs]
        return Difference(*t_interval(values, confidence), len(values), f"t over {len(values)} seeds",
                          seeds_better=sum(1 for i in own if i and i[1] < 0),
                          seeds_worse=sum(1 for i in own if i and i[0] > 0))
    interval = _seed_bootstrap(*pairs[0], confidence)
    if interval is None:  # records without matching resamples: one seed then says nothing beyond its value
        return Difference(mean, -math.inf, math.inf, 1, "one seed, no matching bootstrap resamples")
    return Difference(mean, *interval, 1, f"paired bootstrap, {len(pairs[0][0]['replicates'])} resamples, one seed")


def _seed_bootstrap(a: dict, b: dict, confidence: float) -> tuple[float, float] | None:
    """The interval of one seed's a − b from the paired bootstrap over images (the two measurements
    resample the same image indices), or None when the records carry no matching resamples."""
    from ddpm_lottery.measures.evaluate import centred_interval

    if len(a.get("replicates") or []) != len(b.get("replicates") or []) or not a.get("replicates"):
        return None
    replicates = (np.array(a["replicates"]) - np.array(b["replicates"])).tolist()
    return centred_interval(a["value"] - b["value"], replicates, confidence)


def seed_mean(records: list[dict | None], confidence: float) -> tuple[float, float, float] | None:
    """Mean ± t interval of one measure over seeds (or the bootstrap interval of a single seed)."""
    records = [r for r in records if r is not None]
    if not records:
        return None
    if len(records) == 1:
        return records[0]["value"], *records[0]["interval"]
    return t_interval([r["value"] for r in records], confidence)


# ----------------------------------------------------------------------------------------------
# The questions


def _sparsity(run: Run, index: int) -> float:
    return run.level(index).metrics()["sparsity"]


def _pruned_levels(by_seed: dict[int, Run]) -> list[int]:
    levels = set()
    for run in by_seed.values():
        levels |= {i for i in run.finished_levels() if i > 0}
    return sorted(levels)


def _row(question, comparison, sparsity, differences: dict[str, Difference | None], extra=None) -> dict:
    return {"question": question, "comparison": comparison, "sparsity": sparsity,
            "measures": {m: d.as_dict() for m, d in differences.items() if d is not None}, **(extra or {})}


def compare_levels(collection: Collection, protocols: dict[str, str], first: dict[int, Run], first_level,
                   second: dict[int, Run], second_level) -> dict[str, Difference | None]:
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
    best, better, measured = None, None, False
    for index, sparsity, differences in sorted(levels, key=lambda level: level[1]):
        verdicts = [d.verdict() for d in differences.values() if d is not None]
        measured = measured or bool(verdicts)
        if "worse" in verdicts:
            break
        if verdicts:
            best = (index, sparsity, differences)
            if "better" in verdicts:
                better = (index, sparsity)
    return {"measured": measured,
            "sparsest_not_worse": None if best is None else {
                "level": best[0], "sparsity": best[1],
                "measures": {m: d.as_dict() for m, d in best[2].items() if d is not None}},
            "sparsest_better": None if better is None else {"level": better[0], "sparsity": better[1]}}


def findings(collection: Collection) -> dict:
    protocols = chosen_protocols(collection)
    rows: list[dict] = []
    summary_a = []
    # (a) against the dense model
    for search, by_seed in collection.searches.items():
        levels = []
        for index in _pruned_levels(by_seed):
            seeds = {s: r for s, r in by_seed.items() if index in r.finished_levels()}
            sparsity = _sparsity(next(iter(seeds.values())), index)
            differences = compare_levels(collection, protocols, seeds, index, collection.dense_for(search), 0)
            rows.append(_row("a", f"{search} − dense", sparsity, differences))
            levels.append((index, sparsity, differences))
        summary_a.append({"search": search, **sparsest_against_dense(levels)})
    # (b) varying against the searches that impose no profile; (d) varying forward against reverse
    from ddpm_lottery.pruning.masks import STRATEGIES

    varying = [s for s, (strategy, _) in collection.strategies.items() if STRATEGIES[strategy].imposes_profile]
    plain = [s for s, (strategy, _) in collection.strategies.items() if not STRATEGIES[strategy].imposes_profile]
    for first in varying:
        others = plain + [s for s in varying if s != first and collection.strategies[first][1] == "forward"
                          and collection.strategies[s][1] == "reverse"]
        for second in (s for s in others if collection.same_network(first, s)):
            question = "d" if second in varying else "b"
            for index in _pruned_levels(collection.searches[first]):
                a, b = collection.searches[first], collection.searches[second]
                common = {s: r for s, r in a.items() if s in b and index in r.finished_levels()
                          and index in b[s].finished_levels()
                          and abs(_sparsity(r, index) - _sparsity(b[s], index)) < 1e-3}
                if not common:
                    continue
                differences = compare_levels(collection, protocols, common, index, b, index)
                rows.append(_row(question, f"{first} − {second}", _sparsity(next(iter(common.values())), index),
                                 differences))
    # (c) tickets against their controls
    for (search, control), by_seed in collection.controls.items():
        for index in _pruned_levels(by_seed):
            tickets = {s: r for s, r in collection.searches.get(search, {}).items() if index in r.finished_levels()}
            if not tickets:
                continue
            differences = compare_levels(collection, protocols, tickets, index, by_seed, index)
            rows.append(_row("c", f"{search} − {control} control", _sparsity(next(iter(by_seed.values())), index),
                             differences))
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
    return {"root": str(collection.root), "confidence": collection.confidence, "protocols": protocols,
            "notes": collection.notes, "compute": compute_spent(collection, protocols),
            "protocol_labels": labels, "seeds": seeds, "rows": rows, "sparsest_not_worse": summary_a, "cka": cka,
            "curves": quality_curves(collection, protocols)}


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
            for index in _pruned_levels(by_seed):
                records = [record_of(r, index, key) for r in by_seed.values()]
                stats = seed_mean(records, collection.confidence)
                if stats is not None:
                    count = sum(r is not None for r in records)
                    points.append((_sparsity(next(r for r in by_seed.values() if index in r.finished_levels()),
                                             index), *stats, count))
                    seeds_used.add(count)
            if points:
                curves[name] = points
        records = [record_of(r, 0, key) for r in collection.dense.values()]
        dense = seed_mean(records, collection.confidence)
        dense_seeds = sum(r is not None for r in records)
        if dense is not None:
            seeds_used.add(dense_seeds)
        out[measure] = {"curves": curves, "dense": dense, "dense_seeds": dense_seeds,
                        "seeds_per_point": sorted(seeds_used)}
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
    return {"seconds": seconds, "total_s": sum(seconds.values()), "wall_s": _union_length(busy), "levels": levels,
            "runs": len(runs), "devices": sorted(str(d) for d in devices)}


def _training_stretches(level, gap_s: float = 600.0) -> list[tuple[float, float]]:
    """The stretches a level's training ran, from its log's timestamps (a resumed level has several)."""
    times = sorted(float(line["time"]) for line in level.training_log() if "time" in line)
    return [(a, b) for a, b in zip(times, times[1:]) if b - a <= gap_s]


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def upstream_gaps(pairs: list[tuple[dict, list[dict]]], kind: str, blocks_only: bool = False
                  ) -> list[tuple[str, str, float]]:
    """Per ticket pair (its summary and cka.csv rows): its CKA above baseline, upstream half − downstream half
    (nan pairs left out). A ticket is named by its run folder: the stored paths depend on where each process ran
    from."""
    from ddpm_lottery.measures.cka import half_means

    gaps = []
    for summary, rows in pairs:
        halves = half_means(rows, f"above_{kind}", blocks_only)
        gaps.append((Path(summary["run_a"]).name, Path(summary["run_b"]).name,
                     halves["upstream"] - halves["downstream"]))
    return [g for g in gaps if not math.isnan(g[2])]


def cka_findings(collection: Collection) -> list[dict]:
    """(d): per level, CKA kind and layer scope (every layer, or the U-Net's blocks without its stem), upstream
    minus downstream of the tickets' CKA above its baseline."""
    from ddpm_lottery.measures.cka import CKA_KINDS, half_means, read_csv

    by_level: dict[str, list[tuple[dict, list[dict]]]] = {}
    for folder in collection.cka:
        summary = folder.read_summary()
        if "halves" in summary:
            try:
                rows = read_csv(folder.table)
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"CKA table {folder.table} is unreadable ({exc}); delete {folder.dir} and re-run the "
                                "command that wrote it") from None
            by_level.setdefault(folder.dir.name, []).append((summary, rows))
    out = []
    for level, pairs in sorted(by_level.items()):
        for kind in CKA_KINDS:
            for blocks_only in (False, True):
                gaps = upstream_gaps(pairs, kind, blocks_only)
                if not gaps:
                    continue
                mean, low, high = pairwise_interval(gaps, collection.confidence)
                verdict = ("upstream more similar" if low > 0 else "downstream more similar" if high < 0
                           else NOT_SEPARABLE)
                raw = [half_means(rows, kind, blocks_only) for _, rows in pairs]
                base = [half_means(rows, f"masked_{kind}", blocks_only) for _, rows in pairs]
                out.append({"level": int(level.split("_")[-1]), "kind": kind,
                            "layers": "blocks" if blocks_only else "all", "pairs": len(gaps),
                            "tickets_compared": len({run for a, b, _ in gaps for run in (a, b)}),
                            "sparsity": pairs[0][0]["sparsity"][0], "gap": mean, "interval": [low, high],
                            "verdict": verdict,
                            "tickets": {h: float(np.nanmean([r[h] for r in raw])) for h in ("upstream", "downstream")},
                            "baseline": {h: float(np.nanmean([b[h] for b in base])) for h in ("upstream", "downstream")}})
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _cell(entry: dict | None, with_seeds: bool = False) -> str:
    if entry is None:
        return "–"
    low, high = entry["interval"]
    seeds = f" ({entry['seeds']} seed{'s' if entry['seeds'] != 1 else ''})" if with_seeds else ""
    return f"{entry['difference']:+.3g} [{low:+.3g}, {high:+.3g}] **{entry['verdict']}**{seeds}"


QUESTIONS = {"a": "(a) ticket against the dense model", "b": "(b) varying against unified/global",
             "c": "(c) ticket against its controls", "d": "(d) varying forward against --order reverse"}


def blocks(result: dict) -> list[tuple]:
    """The findings as ("p", text), ("list", items) and ("table", header, rows) blocks, rendered twice below."""
    measures = [m for m in MEASURE_ORDER if m in result["protocols"]]
    confidence = f"{result['confidence']:.0%}"
    seeds = result.get("seeds", [])
    out: list[tuple] = [("p", f"Data seeds: {', '.join(map(str, seeds)) or 'none'}. Differences are first − second "
                         f"(lower is better for every measure) with {confidence} intervals: a Student-t interval over "
                         "the data seeds' paired differences, or with one seed the paired bootstrap over images. A "
                         "verdict is **better** or **worse** when the interval excludes 0, else **not separable** "
                         "with this N and these seeds.")]
    out.append(("list", [f"{LABELS[m]}: {result['protocol_labels'].get(m, result['protocols'][m])}"
                         for m in measures]))
    items = []
    for entry in result["sparsest_not_worse"]:
        best = entry["sparsest_not_worse"]
        if not entry.get("measured", True):
            items.append(f"{entry['search']}: not measured yet (re-run the study to finish it)")
        elif best is None:
            items.append(f"{entry['search']}: none (its least sparse measured level is already worse by some measure)")
        else:
            mixed = len({e["seeds"] for e in best["measures"].values()}) > 1
            cells = "; ".join(f"{LABELS[m]} {_cell(best['measures'].get(m), mixed)}" for m in measures)
            item = f"{entry['search']}: level {best['level']}, {100 * best['sparsity']:.2f} % sparse ({cells})"
            if not any(e["verdict"] == "better" for e in best["measures"].values()):
                better = entry.get("sparsest_better")
                item += (" — undecided: no measure separates it from the dense model either way; the sparsest level "
                         "better by some measure and worse by none is " + (
                             f"level {better['level']}, {100 * better['sparsity']:.2f} %" if better else "none"))
            items.append(item)
    out.append(("p", "**(a) The sparsest level not worse than the dense model** by every measure, below the first "
                     "level some measure finds worse (each level is pruned from the one before):"))
    out.append(("list", items))
    header = ["question", "comparison", "sparsity", *(LABELS[m] for m in measures), "seeds"]
    rows = []
    for row in sorted(result["rows"], key=lambda r: (r["question"], r["comparison"], r["sparsity"])):
        if not row["measures"]:
            continue  # trained, not measured yet: the (a) list says so
        counts = sorted({e["seeds"] for e in row["measures"].values()})
        # a study part-way can have more seeds of one measure than of another: then each cell says its own
        mixed = len(counts) > 1
        rows.append([QUESTIONS[row["question"]], row["comparison"], f"{100 * row['sparsity']:.2f} %",
                     *(_cell(row["measures"].get(m), mixed) for m in measures),
                     f"{counts[0]}–{counts[-1]}" if mixed else str(counts[0])])
    out.append(("table", header, rows))
    if result["cka"]:
        out.append(("p", "**(d) CKA of two tickets above its baseline**, upstream half − downstream half of the "
                         "layers (baseline: two random initialisations under random masks of the tickets' per-layer "
                         "sparsity; the paper's motivation predicts a positive gap; the interval is the jackknife "
                         "over tickets, since pairs share them). Layers: all of them, or the U-Net's blocks without "
                         "its stem (time embedding, conv_in, conv_out), whose few layers have a far lower random "
                         "baseline and can carry a half alone:"))
        rows = []
        for row in result["cka"]:
            low, high = row["interval"]
            rows.append([str(row["level"]), f"{100 * row['sparsity']:.2f} %", row["kind"],
                         "blocks" if row.get("layers") == "blocks" else "all",
                         f"{row['tickets']['upstream']:.3f} / {row['tickets']['downstream']:.3f}",
                         f"{row['baseline']['upstream']:.3f} / {row['baseline']['downstream']:.3f}",
                         f"{row['gap']:+.3f} " + (f"[{low:+.3f}, {high:+.3f}]" if math.isfinite(low)
                                                  else "(too few tickets: no interval)"),
                         f"{row['pairs']} ({row.get('tickets_compared', 2 * row['pairs'])} tickets)",
                         f"**{row['verdict']}**"])
        out.append(("table", ["level", "sparsity", "CKA", "layers", "tickets up / down", "baseline up / down",
                              "gap above baseline", "pairs", "verdict"], rows))
    out += quality_blocks(result)
    undecided = [f"{QUESTIONS[r['question']].split(') ')[0]}) {r['comparison']} at {100 * r['sparsity']:.1f} %"
                 + _every_seed_agrees(r["measures"])
                 for r in result["rows"] if r["measures"]
                 and all(e["verdict"] == NOT_SEPARABLE for e in r["measures"].values())]
    notes = result.get("notes", {})
    larger = notes.get("decided_by")
    compute = result.get("compute")
    if compute and compute["levels"]:
        named = {**LABELS, "other": "other evaluations (other samplers or N, e.g. a frontier's)"}
        parts = ", ".join(f"{named.get(k, k)} {_hours(v)}" for k, v in compute["seconds"].items() if v)
        wall = (f" All of it ran in {_hours(compute['wall_s'])} of wall time (the union of the stretches any part "
                f"was running, in however many processes)." if compute.get("wall_s") else "")
        out.append(("p", f"Compute spent on these results: {_hours(compute['total_s'])} in all ({parts}), "
                         f"summed from the records of {compute['levels']} trained levels in {compute['runs']} "
                         f"run{'s' * (compute['runs'] != 1)} "
                         f"(measured on {', '.join(compute['devices']) or '–'}); CKA comes on top.{wall}"))
    if undecided:
        text = (f"Not separable by any measure at this budget: {'; '.join(undecided)}."
                + (" \"Alone\" is a seed's own paired bootstrap over images, which holds the sampling noise but "
                   "not the spread from seed to seed that the intervals above include."
                   if any(" alone" in item for item in undecided) else "")
                + (f" `ddpm-lottery study {larger}` is sized to decide them (more seeds, longer training)."
                   if larger else " More data seeds or a larger N can decide them."))
        out.append(("p", text))
    asked = {r["question"] for r in result["rows"] if r["measures"]}
    declares = notes.get("declares", {})
    for question in ("b", "c"):
        if question not in asked:
            if declares.get(question):
                out.append(("p", f"{QUESTIONS[question]}: declared, not measured yet (re-run the study to finish "
                                 "it)."))
                continue
            what = {"b": "varying search beside a unified or global one", "c": "controls"}[question]
            out.append(("p", f"{QUESTIONS[question]}: not asked, this study has no {what}."
                        + (f" `ddpm-lottery study {larger}` answers it." if larger else "")))
    if not result["cka"] and declares.get("d"):
        out.append(("p", "(d) CKA of ticket pairs: declared, not computed yet (re-run the study to finish it)."))
    elif not result["cka"]:
        out.append(("p", "(d) CKA needs pairs of tickets of one model (two data seeds of a search that imposes no "
                         "profile, `cka_search`); this study has none."
                    + (f" `ddpm-lottery study {larger}` compares them." if larger else "")))
    return out


def _every_seed_agrees(measures: dict) -> str:
    """For a comparison no interval over the seeds decides: the measures by which every seed, on its own
    bootstrap over images, finds the same direction (so only the spread from seed to seed keeps it open)."""
    agreed = []
    for measure, entry in measures.items():
        seeds = entry.get("seeds", 1)
        for side in ("better", "worse"):
            if seeds >= 2 and entry.get(f"seeds_{side}") == seeds:
                agreed.append(f"{LABELS.get(measure, measure)} {side} on each of the {seeds} seeds alone")
    return f" ({', '.join(agreed)})" if agreed else ""


def quality_blocks(result: dict) -> list[tuple]:
    """Figure 2's numbers: per measure, each search's quality at each sparsity, mean over the data seeds."""
    curves = result.get("curves", {})
    out = []
    for measure in (m for m in MEASURE_ORDER if curves.get(m, {}).get("curves") or curves.get(m, {}).get("dense")):
        panel = curves[measure]
        sparsities = sorted({p[0] for points in panel["curves"].values() for p in points})

        def cell(point) -> str:
            mean, low, high, *count = point
            seeds = count[0] if count else 1
            return f"{mean:.3g} [{low:.3g}, {high:.3g}] ({seeds})"

        rows = []
        if panel.get("dense"):
            rows.append(["dense", cell((*panel["dense"], panel.get("dense_seeds", 1)))] + ["" for _ in sparsities])
        for name, points in sorted(panel["curves"].items()):
            at = {p[0]: p[1:] for p in points}
            rows.append([name, ""] + [cell(at[s]) if s in at else "–" for s in sparsities])
        out.append(("p", f"**Quality by sparsity: {LABELS[measure]}** (Figure 2's numbers; lower is better): "
                         f"mean over the data seeds with its {result['confidence']:.0%} interval and, in parentheses, "
                         "how many seeds it averages (a t interval over them; with one seed, the bootstrap over "
                         "images)."))
        out.append(("table", ["search", "0 % (dense)", *(f"{100 * s:.2f} %" for s in sparsities)], rows))
    return out


def markdown(result: dict) -> str:
    lines = []
    for block in blocks(result):
        if block[0] == "p":
            lines += [block[1], ""]
        elif block[0] == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        else:
            _, header, rows = block
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def html(result: dict) -> str:
    import html as escape
    import re

    def inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape.escape(text))

    parts = []
    for block in blocks(result):
        if block[0] == "p":
            parts.append(f"<p>{inline(block[1])}</p>")
        elif block[0] == "list":
            parts.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block[1]) + "</ul>")
        else:
            _, header, rows = block
            parts.append("<table><tr>" + "".join(f"<th class=l>{inline(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td class=l>{inline(c)}</td>" for c in row) + "</tr>"
                                   for row in rows) + "</table>")
    return "\n".join(parts)


def write_findings(path: str | Path, *, log=print) -> dict:
    """Compute the findings of a study or run folder and write findings.json and findings.md into it."""
    path = Path(path)
    result = findings(collect(path))
    if not result["protocols"] and not result["cka"]:
        log(f"no measurement stored under {path} yet: no findings")
    write_json(StudyFolder(path).findings_json, result)
    write_text(StudyFolder(path).findings_md, "# Findings\n\n" + markdown(result))
    return result


def print_findings(path: str | Path, log=print) -> int:
    path = Path(path)
    if not StudyFolder(path).is_study() and not Run.is_run(path):
        raise UserError(f"{path} is neither a study folder (study.json) nor a run folder; give the --out of "
                        "`ddpm-lottery study` or a run")
    result = findings(collect(path))
    log(markdown(result))
    return 0


__all__ = ["collect", "findings", "markdown", "html", "blocks", "write_findings", "print_findings", "paired_difference", "Difference"]
