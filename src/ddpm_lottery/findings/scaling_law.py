"""(e) by a law: the fit of :mod:`ddpm_lottery.findings.law` to every level of a width study, per measure,
and what it predicts at a target size, in numbers and in words.

The searches of one family (strategy, order, rate; :func:`ddpm_lottery.findings.scale.family`) on two or
more networks make the curves: each network's levels from all its searches (a search of finer levels
beside a coarser one adds its points; a level both have counts once), with its own dense model at
density 1.  Per measure (held-out loss, domain FD, Inception FID where measured), both forms are fitted,
the one with the lower held-out error is kept, and its ψ and boundaries get a bootstrap interval.

δ, where the boundary is, follows the tool's verdict: a level is "worse" when its paired bootstrap
interval against the dense model excludes zero, so the rise the verdict can see is about the half-width
of that interval.  δ is its median, relative to the dense value, over every seed's pruned levels (the
finding states it).  The target's own dense error is unknown: the joint form's boundary is solved with
the widest measured network's e_np (the plateau form's does not depend on it), so the target's boundary is
a projection, conditional on that and on ψ carrying over from these data to the target's.  The verdict
compares a level with the *measured* dense model, where the fitted e_np is the law's plateau (tickets a
little better than dense pull it below): the threshold is (1 + δ) times the measured dense error, and the
target takes the widest network's ratio of the two.

:func:`ddpm_lottery.findings.law.law_of` fits, chooses and bootstraps; this module reads its curves from
the records and says what it found, in sentences (:mod:`.render` places them after (e)) and in the figure's
data.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_lottery.findings.collect import Collection, record_of
from ddpm_lottery.findings.law import Curves, Fit, law_of
from ddpm_lottery.findings.levels import per_seed
from ddpm_lottery.findings.scale import (
    PAPER_CLAIM,
    PAPER_NETWORK,
    boundary,
    bracket_rank,
    family,
    prunable_weights_of,
)
from ddpm_lottery.measures.stats import paired_difference

#: Bootstrap rounds of a finding's fit.
ROUNDS = 200
#: δ when no record carries bootstrap resamples to read the verdict's resolution from.
FALLBACK_DELTA = 0.05


# ----------------------------------------------------------------------------------------------
# From a study's stored records


def family_networks(bounds: list[dict], family) -> list[dict[str, list[str]]]:
    """Per family of searches (strategy, order, rate) spanning two or more networks: network -> its searches."""
    groups: dict[tuple, dict[str, list[str]]] = {}
    for b in bounds:
        groups.setdefault(family(b), {}).setdefault(b["network"], []).append(b["search"])
    return [networks for networks in groups.values() if len(networks) >= 2]


def curves_of(collection: Collection, key: str, networks: dict[str, list[str]]) -> tuple[Curves, dict, dict]:
    """The levels of a family's networks measured under ``key``: the curves, each network's prunable
    weights and its searches (network index -> names)."""
    rows, weights, names = [], {}, {}
    for n, (_network, searches) in enumerate(sorted(networks.items())):
        seen = set()
        names[n] = searches
        for search in searches:
            dense = collection.dense_for(search)
            for seed, run in collection.searches[search].items():
                for index in run.finished_levels():
                    source = dense.get(seed, run) if index == 0 else run
                    record = record_of(source, index, key)
                    metrics = source.level(index).metrics() if index in source.finished_levels() else None
                    if record is None or metrics is None or not record["value"] > 0:
                        continue
                    weights[n] = metrics["prunable_parameters"]
                    density = round(1 - metrics["sparsity"], 6)
                    if (seed, density) not in seen:  # a level two searches share counts once
                        seen.add((seed, density))
                        rows.append((n, seed, density, float(record["value"])))
    densities = {n: sorted({d for m, _, d, _ in rows if m == n}, reverse=True) for n in weights}
    reference = min(weights.values()) if weights else 1
    table = [
        (math.sqrt(weights[n] / reference), d, e, n, s, densities[n].index(d)) for n, s, d, e in rows if n in weights
    ]
    columns = list(zip(*table)) if table else [[]] * 6
    kinds = (float, float, float, int, int, int)
    return Curves(*(np.array(c, dtype=t) for c, t in zip(columns, kinds))), weights, names


def verdict_delta(collection: Collection, key: str, searches: list[str]) -> float | None:
    """δ as the verdict sees it: the median over every seed's pruned levels of the half-width of the paired
    bootstrap interval of (level − dense), relative to the dense value."""
    widths = []
    for search in searches:
        dense = collection.dense_for(search)
        for seed, run in collection.searches[search].items():
            base = record_of(dense[seed], 0, key) if seed in dense else None
            for index in (i for i in run.finished_levels() if i > 0):
                difference = paired_difference([(record_of(run, index, key), base)], collection.confidence)
                if difference is not None and math.isfinite(difference.high - difference.low) and base["value"] > 0:
                    widths.append((difference.high - difference.low) / 2 / base["value"])
    return float(np.median(widths)) if widths else None


def measured_bracket(collection: Collection, measure: str, key: str, searches: list[str]) -> list | None:
    """The boundary bracket of a network's searches by this measure alone, from the search that places it best
    (:func:`bracket_rank`); None: none measured."""
    entries = []
    for search in searches:
        answer = {"per_seed": per_seed(collection, {measure: key}, search)}
        entry = boundary(collection, search, answer)
        if entry is not None:
            entries.append(entry)
    return min(entries, key=bracket_rank)["sparsity_bracket"] if entries else None


def law_findings(
    collection: Collection, protocols: dict[str, str], bounds: list[dict], rounds: int = ROUNDS
) -> list[dict]:
    """Per family of searches on two or more networks: the law fitted per measure, the boundaries each
    measure alone places on every network, and the projection at ddpm-cifar10's size."""
    families = family_networks(bounds, family)
    if not families:
        return []
    target_weights = prunable_weights_of(PAPER_NETWORK)
    out = []
    for networks in families:
        measures = {}
        for measure, key in protocols.items():
            curves, weights, names = curves_of(collection, key, networks)
            if len(weights) < 2:
                continue  # a measure only some widths have compares nothing
            searches = [s for group in names.values() for s in group]
            measured_delta = verdict_delta(collection, key, searches)
            delta = measured_delta if measured_delta is not None else FALLBACK_DELTA
            law = law_of(
                curves, weights, target_weights, delta, collection.confidence, rounds, PAPER_NETWORK, PAPER_CLAIM
            )
            law["delta_from"] = "verdict" if measured_delta is not None else "fallback"
            for entry in law.get("networks", []):
                entry["searches"] = names[entry["network"]]
                entry["measured"] = measured_bracket(collection, measure, key, names[entry["network"]])
            measures[measure] = law
        if measures:
            out.append({"networks": sorted(networks.values(), key=len), "measures": measures})
    return out


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _range(pair: list | None, digits: int = 2, percent: bool = False) -> str:
    if pair is None:
        return "no interval"
    if percent:
        return f"[{_percent(pair[0])}, {_percent(pair[1])}]"
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]"


def _bracket_text(bracket: list | None) -> str:
    if bracket is None:
        return "–"
    low, high = bracket
    return f"({_percent(low)}, {_percent(high)}]" if high is not None else f"above {_percent(low)}"


def _network_name(network: dict) -> str:
    return ", ".join(network.get("searches") or [f"network {network['network']}"])


def _law_item(label: str, law: dict) -> str:
    """One measure's law in a sentence or three."""
    forms = law["forms"]
    scores = "; ".join(
        f"{form} {v['held_out']:.3f}" if v["held_out"] is not None else f"{form} not fitted"
        for form, v in forms.items()
    )
    if law["chosen"] is None:
        return f"{label}: no form could be fitted ({scores})"
    delta = f"δ = {100 * law['delta']:.2f} %" + (
        " (the verdict's resolution: the median half-width of the paired interval against dense)"
        if law.get("delta_from") == "verdict"
        else " (no record carries resamples: a fallback)"
    )
    text = f"{label}: the {law['chosen']} fits best (held-out error in log error: {scores}); {delta}. "
    if law["determined"]:
        text += (
            f"ψ = {law['psi']:.2f} {_range(law['psi_interval'])}, so k = 1 − ψ/2 = {law['k']:.2f} "
            f"{_range(law['k_interval'])}: {surviving_growth(law['k_interval'])}. "
        )
    else:
        text += (
            f"ψ is **not determined** ({'; '.join(law['because'])}): its bootstrap interval is "
            f"{_range(law['psi_interval'])}, k {_range(law['k_interval'])}. "
        )
    noise = law["seed_noise"]
    text += f"The fit deviates {100 * law['deviation']:.1f} % on average from the levels' means" + (
        f", against a seed-to-seed noise of {100 * noise:.1f} %."
        if noise is not None
        else " (one seed: no noise to set it against)."
    )
    target = law["target"]
    where = (
        f"near **{_percent(target['sparsity'])}** {_range(target['interval'], percent=True)}"
        if law["determined"] and target["sparsity"] is not None
        else f"**not determined** (bootstrap interval {_range(target['interval'], percent=True)})"
    )
    return (
        text + f" **A projection, not a measurement**: at {target['name']}'s {target['weights']:,} prunable weights "
        f"(w = {target['width']:.1f}) the boundary lies {where}, beside the paper's claim of {target['claim']}."
    )


def surviving_growth(k_interval) -> str:
    """What k's interval says of the boundary's surviving weights S ∝ W^k across widths (question (e))."""
    low, high = k_interval
    if low > 0 and high < 1:
        return "the surviving weights at the boundary grow **sublinearly** with the network's size"
    if high <= 0:
        return "the surviving weights at the boundary stay about **constant** across sizes"
    if low >= 1:
        return "the surviving weights at the boundary grow **like the network's size** (or faster)"
    return "whether the surviving weights at the boundary grow sublinearly is **not separable** from " + (
        "a constant count" if low <= 0 else "growth like the network's size"
    )


def law_blocks(laws: list[dict], labels: dict[str, str], order: tuple[str, ...]) -> list[tuple]:
    """The law's paragraphs, lists and tables, per family; ``labels`` name the measures in ``order``."""
    out = []
    for entry in laws:
        measures = [m for m in order if m in entry["measures"]]
        out.append(
            (
                "p",
                "**(e) by a law: error against density at every width, fitted** (Rosenfeld et al. 2021: "
                "err(d) = e_np·|(x − j·p·(e_up/e_np)^(1/g)) / (x − j·p)|^g with x = w^ψ·d, or the simpler "
                "e_np·(1 + (c/x)^g), whichever predicts left-out levels better). Searches: "
                + "; ".join(", ".join(group) for group in entry["networks"])
                + ". Every width has the same depth, so depth's exponent φ drops out. ψ and every boundary carry "
                "a bootstrap interval over data seeds and levels; the boundary is where the fitted error is δ "
                "above the dense error, and the surviving weights there grow as W^k, k = 1 − ψ/2:",
            )
        )
        out.append(("list", [_law_item(labels[m], entry["measures"][m]) for m in measures]))
        first = entry["measures"][measures[0]]
        header = ["network", "prunable weights", "w"]
        for m in measures:
            header += [f"{labels[m]}: measured", f"{labels[m]}: fitted"]
        rows = []
        for i, network in enumerate(first["networks"]):
            row = [_network_name(network), f"{network['weights']:,}", f"{network['width']:.2f}"]
            for m in measures:
                other = entry["measures"][m]["networks"][i] if i < len(entry["measures"][m]["networks"]) else None
                fitted = (
                    f"{_percent(other['fitted'])} {_range(other['fitted_interval'], percent=True)}" if other else "–"
                )
                row += [_bracket_text(other.get("measured")) if other else "–", fitted]
            rows.append(row)
        out.append(("table", header, rows))
        out.append(
            (
                "p",
                "Measured boundaries are each measure's own (a level worse by that measure alone); the fitted "
                "ones are the law's. The paper's 90–99 % is a claim about FID: the image measures' boundary "
                "(domain FD here, Inception FID where measured) answers it; the held-out loss's is stricter. "
                "The projection is conditional: on ψ carrying over from these images to the target's data and "
                "depth, and on the target's dense error (the joint form's boundary is solved with the widest "
                "network's). `ddpm-lottery study ddpm-cifar10-scaling` measures ψ on the target's own family.",
            )
        )
    return out


def figure_panels(entry: dict, labels: dict[str, str], order: tuple[str, ...]) -> dict[str, dict]:
    """What the law's figure draws, per measure: each network's points (density, seed mean) and the fitted
    curve through them, and both on m* = w^ψ·d at the fitted ψ over each network's fitted e_np (``determined``
    says whether ψ is)."""
    panels = {}
    for measure in (m for m in order if m in entry["measures"]):
        law = entry["measures"][measure]
        if law.get("chosen") is None:
            continue
        fitted = Fit(law["chosen"], law["fit"]["shared"], {int(n): v for n, v in law["fit"]["dense"].items()}, 0.0)
        curves, lines = {}, {}
        for network in law["networks"]:
            name = f"{_network_name(network)} (w = {network['width']:.2f})"
            points = network["points"]
            curves[name] = points
            grid = np.geomspace(min(p[0] for p in points) / 2, 1.0, 80)
            values = np.exp(
                fitted.log_error(np.full(grid.size, network["width"]), grid, [network["network"]] * grid.size)
            )
            lines[name] = (
                network["width"],
                fitted.dense[network["network"]],
                list(zip(grid.tolist(), values.tolist())),
            )
        panels[labels[measure]] = {
            "curves": curves,
            "fitted": lines,
            "psi": fitted.psi,
            "determined": law["determined"],
            "psi_interval": law.get("psi_interval"),
        }
    return panels


__all__ = ["curves_of", "figure_panels", "law_blocks", "law_findings", "verdict_delta"]
