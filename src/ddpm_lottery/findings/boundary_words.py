"""Boundaries in words: a search's bracket as a sentence ((e) to (h) all state them), and the blocks of (g)
and (h) (:mod:`ddpm_lottery.findings.comparisons`).

The blocks are the ``("p", text)``, ``("list", items)`` and ``("table", header, rows)`` of
:mod:`ddpm_lottery.findings.render`, which renders them with every other question's; the measures' labels
and order come from there as arguments, as :func:`~ddpm_lottery.findings.scaling_law.law_blocks` takes them,
since render imports this module.
"""

from __future__ import annotations

from ddpm_lottery.findings.comparisons import EVERY
from ddpm_lottery.findings.scale import UNDECIDED


def _side(level: dict | None, verdict: str, none: str) -> str:
    if level is None:
        return none
    return f"level {level['level']} ({100 * level['sparsity']:.2f} %, {level['surviving']:,} surviving) {verdict}"


def bracket_words(entry: dict, name: str | None = None) -> str:
    """A boundary in words: between its sparsest level not worse and its first level worse, on every seed.
    ``name`` names the search where its own name is not enough (a search of another study)."""
    seeds = entry.get("seeds") or {}
    every = " on every seed" if len(seeds) > 1 else ""
    below = _side(entry["not_worse"], "not worse" + every, "no level not worse" + (" on some seed" if every else ""))
    above = _side(
        entry["first_worse"],
        "worse" + every,
        f"no level worse yet{' on some seed' if every else ''} (the boundary lies beyond its sparsest level)",
    )
    text = f"{name or entry['search']} ({entry['weights']:,} prunable weights): {below}; {above}"
    if len(seeds) > 1:

        def sparsity(level):
            return f"{100 * level['sparsity']:.2f} %" if level else "–"

        text += (
            " ("
            + "; ".join(
                f"seed {seed}: {sparsity(b['not_worse'])} not worse, {sparsity(b['first_worse'])} worse"
                for seed, b in seeds.items()
            )
            + ")"
        )
    return text


RULE = (
    "each search against its own dense model: on each data seed its boundary lies between the sparsest level "
    "no measure finds worse and the first level some measure finds worse, by that seed's paired bootstrap "
    "over images, and a search's bracket holds every seed's; two brackets separate the searches only when "
    f"they do not overlap, else they are **{UNDECIDED}**"
)


def _measure_name(measure: str, labels: dict) -> str:
    return "every measure both have, together" if measure == EVERY else f"{labels.get(measure, measure)} alone"


def _ordered(measures: dict, order: tuple) -> list[str]:
    """The compared measures in the findings' order, the joint bracket last."""
    named = [m for m in order if m in measures] + sorted(m for m in measures if m not in order and m != EVERY)
    return named + ([EVERY] if EVERY in measures else [])


def _budget(entry: dict) -> str:
    return f"{entry['steps']:,} steps a level at lr {entry['lr']:g}, batch {entry['batch_size']}"


def reference_blocks(found: dict, labels: dict, order: tuple) -> list[tuple]:
    """(g): this study's search against another study's, by each measure both have."""
    this, there = found["against"], f"{found['search']} of {found['study']}"
    if found.get("missing"):
        return [("p", f"**(g) {this} against {there}**: not compared: {found['missing']}.")]
    if found.get("pending"):
        return [("p", f"**(g) {this} against {there}**: not compared yet, {this} has no run yet.")]
    families, budgets = found["families"], found["budgets"]
    if families["this"] != families["reference"]:
        kind = f"The two networks differ in family ({families['this']} here, {families['reference']} there)"
    else:
        kind = f"Both networks are of one family ({families['this']})"
    if budgets["this"] != budgets["reference"]:
        kind += f" and in training budget ({_budget(budgets['this'])} here, {_budget(budgets['reference'])} there)"
    else:
        kind += f"; their training budget is the same ({_budget(budgets['this'])})"
    kind += (
        ". A boundary may move with the family as with the budget, so this compares the two searches as trained, "
        "not the two families alone."
    )
    text = (
        f"**(g) {this} against {there}** (that study's stored runs, read as they are, not retrained): their "
        f"boundaries by each measure both studies have and by all of them together ({RULE}). {kind}"
    )
    if found.get("only_here"):
        text += (
            " Only this study measures "
            + ", ".join(labels.get(m, m) for m in found["only_here"])
            + ", so it counts for neither bracket."
        )
    different = [m for m in found["measures"] if found["protocols"][m][0] != found["protocols"][m][1]]
    if different:
        text += " Measured under different protocols: " + "; ".join(
            f"{labels.get(m, m)}: {found['protocols'][m][0]} here, {found['protocols'][m][1]} there" for m in different
        )
        text += "."
    out: list[tuple] = [("p", text)]
    if not found["by_measure"]:
        out.append(("p", f"(g): not compared yet: no measure of both {this} and {there} is stored."))
        return out
    items = []
    for measure in _ordered(found["by_measure"], order):
        entry = found["by_measure"][measure]
        items.append(
            f"by {_measure_name(measure, labels)}: {bracket_words(entry['second'])}; "
            f"{bracket_words(entry['first'], there)}: {this}'s boundary sparsity is **{entry['sparsity']}**, its "
            f"surviving weight count **{entry['surviving']}**"
        )
    return [*out, ("list", items)]


def conditioning_blocks(found: dict, labels: dict, order: tuple, confidence: float) -> list[tuple]:
    """(h): a conditional search against its unconditional twin, and its class accuracy by level."""
    conditional, plain = found["conditional"], found["unconditional"]
    seeds = found["seeds"]
    same = seeds[0] == seeds[1]
    text = (
        f"**(h) Does conditioning move the boundary?** {conditional} (class-conditional) against {plain} "
        "(unconditional: the same strategy, rate and preset), "
        + (
            f"on the same data seeds ({', '.join(map(str, seeds[0]))})"
            if same
            else f"on data seeds {', '.join(map(str, seeds[1]))} against {', '.join(map(str, seeds[0]))}"
        )
        + f", by each measure both have and by all of them together ({RULE}):"
    )
    out: list[tuple] = [("p", text)]
    if found["by_measure"]:
        items = []
        for measure in _ordered(found["by_measure"], order):
            entry = found["by_measure"][measure]
            items.append(
                f"by {_measure_name(measure, labels)}: {bracket_words(entry['second'])}; "
                f"{bracket_words(entry['first'])}: with conditioning the boundary's sparsity is "
                f"**{entry['sparsity']}**, its surviving weight count **{entry['surviving']}**"
            )
        out.append(("list", items))
    else:
        out.append(("p", f"(h): not compared yet: no measure of both {conditional} and {plain} is stored."))
    if found.get("accuracy"):
        chance = found.get("chance")
        out.append(
            (
                "p",
                f"**Class accuracy of {conditional} by level** (1 − the stored class error): mean over the data "
                f"seeds with its {confidence:.0%} interval (a t interval over the seeds; with one seed, the "
                "bootstrap over images), and against its dense model (level − dense: positive is more "
                "accurate). An unconditional model has no class accuracy of its own: its samples match the "
                "class asked for by chance"
                + (f", {100 * chance:.0f} % with these {round(1 / chance)} classes" if chance else "")
                + "."
                + (
                    f" By class accuracy alone, {bracket_words(found['accuracy_boundary'])}."
                    if found.get("accuracy_boundary")
                    else ""
                ),
            )
        )
        rows = []
        for row in found["accuracy"]:
            low, high = row["interval"]
            against = row["against_dense"]
            if against is None:
                versus = "–" if row["level"] else "(the dense model)"
            else:
                a, b = against["interval"]
                versus = f"{100 * against['difference']:+.1f} [{100 * a:+.1f}, {100 * b:+.1f}] points **{against['verdict']}**"
            rows.append(
                [
                    str(row["level"]),
                    f"{100 * row['sparsity']:.2f} %",
                    f"{100 * row['accuracy']:.1f} % [{100 * low:.1f}, {100 * high:.1f}]",
                    str(row["seeds"]),
                    versus,
                ]
            )
        out.append(("table", ["level", "sparsity", "class accuracy", "seeds", "against dense"], rows))
    return out


def comparison_blocks(comparisons: dict, labels: dict, order: tuple, confidence: float) -> list[tuple]:
    """(g) and (h), where the study asks them; nothing otherwise."""
    out = []
    if comparisons.get("reference"):
        out += reference_blocks(comparisons["reference"], labels, order)
    for found in comparisons.get("conditioning") or []:
        out += conditioning_blocks(found, labels, order, confidence)
    return out


__all__ = ["bracket_words", "comparison_blocks", "conditioning_blocks", "reference_blocks"]
