"""The findings written out: as markdown (``findings.md``, the terminal), as HTML (the study report), and as
``findings.json`` beside them.

:func:`blocks` turns a result of :func:`ddpm_lottery.findings.questions.findings` into paragraphs, lists and
tables once; :func:`markdown` and :func:`html` render those blocks.

One concept past 400 lines: the findings' words, every question's sentences in one place, so that the
markdown, the terminal and the report say the same thing.
"""

from __future__ import annotations

import html as escape
import math
import re
from pathlib import Path

from ddpm_lottery.findings.boundary_words import bracket_words, comparison_blocks
from ddpm_lottery.findings.collect import collect
from ddpm_lottery.findings.questions import findings
from ddpm_lottery.findings.scale import UNDECIDED
from ddpm_lottery.findings.scaling_law import law_blocks
from ddpm_lottery.measures.stats import NOT_SEPARABLE
from ddpm_lottery.runs.outputs import StudyFolder
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import write_json, write_text
from ddpm_lottery.utils.units import duration

MEASURE_ORDER = ("domain", "loss", "inception", "class-accuracy")
# class accuracy is stored as its error rate, so that lower is better for every measure alike
LABELS = {
    "inception": "Inception FID",
    "domain": "domain FD",
    "loss": "held-out loss",
    "class-accuracy": "class error (1 − class accuracy)",
}


def _cell(entry: dict | None, with_seeds: bool = False) -> str:
    if entry is None:
        return "–"
    low, high = entry["interval"]
    seeds = f" ({entry['seeds']} seed{'s' if entry['seeds'] != 1 else ''})" if with_seeds else ""
    return f"{entry['difference']:+.3g} [{low:+.3g}, {high:+.3g}] **{entry['verdict']}**{seeds}"


QUESTIONS = {
    "a": "(a) ticket against the dense model",
    "b": "(b) varying against unified/global",
    "c": "(c) ticket against its controls",
    "d": "(d) varying forward against --order reverse",
}


def blocks(result: dict) -> list[tuple]:
    """The findings as ("p", text), ("list", items) and ("table", header, rows) blocks, rendered twice below."""
    measures = [m for m in MEASURE_ORDER if m in result["protocols"]]
    confidence = f"{result['confidence']:.0%}"
    seeds = result.get("seeds", [])
    out: list[tuple] = [
        (
            "p",
            f"Data seeds: {', '.join(map(str, seeds)) or 'none'}. Differences are first − second "
            f"(lower is better for every measure) with {confidence} intervals: a Student-t interval over "
            "the data seeds' paired differences, or with one seed the paired bootstrap over images. A "
            "verdict is **better** or **worse** when the interval excludes 0, else **not separable** "
            "with this N and these seeds.",
        )
    ]
    out.append(("list", [f"{LABELS[m]}: {result['protocol_labels'].get(m, result['protocols'][m])}" for m in measures]))
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
                item += (
                    " — undecided: no measure separates it from the dense model either way; the sparsest level "
                    "better by some measure and worse by none is "
                    + (f"level {better['level']}, {100 * better['sparsity']:.2f} %" if better else "none")
                )
            items.append(item)
    out.append(
        (
            "p",
            "**(a) The sparsest level not worse than the dense model** by every measure, below the first "
            "level some measure finds worse (each level is pruned from the one before):",
        )
    )
    out.append(("list", items))
    header = ["question", "comparison", "sparsity", *(LABELS[m] for m in measures), "seeds"]
    rows = []
    for row in sorted(result["rows"], key=lambda r: (r["question"], r["comparison"], r["sparsity"])):
        if not row["measures"]:
            continue  # trained, not measured yet: the (a) list says so
        counts = sorted({e["seeds"] for e in row["measures"].values()})
        # a study part-way can have more seeds of one measure than of another: then each cell says its own
        mixed = len(counts) > 1
        rows.append(
            [
                QUESTIONS[row["question"]],
                row["comparison"],
                f"{100 * row['sparsity']:.2f} %",
                *(_cell(row["measures"].get(m), mixed) for m in measures),
                f"{counts[0]}–{counts[-1]}" if mixed else str(counts[0]),
            ]
        )
    out.append(("table", header, rows))
    if result["cka"]:
        out.append(
            (
                "p",
                "**(d) CKA of two tickets above its baseline**, upstream half − downstream half of the "
                "layers (baseline: two random initialisations under random masks of the tickets' per-layer "
                "sparsity; the paper's motivation predicts a positive gap; the interval is the jackknife "
                "over tickets, since pairs share them). Layers: all of them, or the U-Net's blocks without "
                "its stem (time embedding, conv_in, conv_out), whose few layers have a far lower random "
                "baseline and can carry a half alone:",
            )
        )
        rows = []
        for row in result["cka"]:
            low, high = row["interval"]
            rows.append(
                [
                    str(row["level"]),
                    f"{100 * row['sparsity']:.2f} %",
                    row["kind"],
                    "blocks" if row.get("layers") == "blocks" else "all",
                    f"{row['tickets']['upstream']:.3f} / {row['tickets']['downstream']:.3f}",
                    f"{row['baseline']['upstream']:.3f} / {row['baseline']['downstream']:.3f}",
                    f"{row['gap']:+.3f} "
                    + (f"[{low:+.3f}, {high:+.3f}]" if math.isfinite(low) else "(too few tickets: no interval)"),
                    f"{row['pairs']} ({row.get('tickets_compared', 2 * row['pairs'])} tickets)",
                    f"**{row['verdict']}**",
                ]
            )
        out.append(
            (
                "table",
                [
                    "level",
                    "sparsity",
                    "CKA",
                    "layers",
                    "tickets up / down",
                    "baseline up / down",
                    "gap above baseline",
                    "pairs",
                    "verdict",
                ],
                rows,
            )
        )
    out += scale_blocks(result.get("scale") or {}, result.get("notes", {}).get("boundaries_decided_by", ""))
    out += comparison_blocks(result.get("comparisons") or {}, LABELS, MEASURE_ORDER, result["confidence"])
    out += quality_blocks(result)
    undecided = [
        f"{QUESTIONS[r['question']].split(') ')[0]}) {r['comparison']} at {100 * r['sparsity']:.1f} %"
        + _every_seed_agrees(r["measures"])
        for r in result["rows"]
        if r["measures"] and all(e["verdict"] == NOT_SEPARABLE for e in r["measures"].values())
    ]
    notes = result.get("notes", {})
    larger = notes.get("decided_by")
    compute = result.get("compute")
    if compute and compute["levels"]:
        named = {**LABELS, "other": "other evaluations (other samplers or N, e.g. a frontier's)"}
        parts = ", ".join(f"{named.get(k, k)} {duration(v)}" for k, v in compute["seconds"].items() if v)
        wall = (
            f" All of it ran in {duration(compute['wall_s'])} of wall time (the union of the stretches any part "
            f"was running, in however many processes)."
            if compute.get("wall_s")
            else ""
        )
        out.append(
            (
                "p",
                f"Compute spent on these results: {duration(compute['total_s'])} in all ({parts}), "
                f"summed from the records of {compute['levels']} trained levels in {compute['runs']} "
                f"run{'s' * (compute['runs'] != 1)} "
                f"(measured on {', '.join(compute['devices']) or '–'}); CKA comes on top.{wall}",
            )
        )
    if undecided:
        text = (
            f"Not separable by any measure at this budget: {'; '.join(undecided)}."
            + (
                ' "Alone" is a seed\'s own paired bootstrap over images, which holds the sampling noise but '
                "not the spread from seed to seed that the intervals above include."
                if any(" alone" in item for item in undecided)
                else ""
            )
            + (
                f" `ddpm-lottery study {larger}` is sized to decide them (more seeds, longer training)."
                if larger
                else " More data seeds or a larger N can decide them."
            )
        )
        out.append(("p", text))
    asked = {r["question"] for r in result["rows"] if r["measures"]}
    declares = notes.get("declares", {})
    for question in ("b", "c"):
        if question not in asked:
            unpaired = [u for u in result.get("unpaired", []) if u["question"] == question]
            if unpaired:
                out.append(("p", _unpaired_text(unpaired, result.get("scale") or {})))
                continue
            if declares.get(question):
                out.append(("p", f"{QUESTIONS[question]}: declared, not measured yet (re-run the study to finish it)."))
                continue
            what = {"b": "varying search beside a unified or global one", "c": "controls"}[question]
            out.append(
                (
                    "p",
                    f"{QUESTIONS[question]}: not asked, this study has no {what}."
                    + (f" `ddpm-lottery study {larger}` answers it." if larger else ""),
                )
            )
    if not result["cka"] and declares.get("d"):
        out.append(("p", "(d) CKA of ticket pairs: declared, not computed yet (re-run the study to finish it)."))
    elif not result["cka"]:
        out.append(
            (
                "p",
                "(d) CKA needs pairs of tickets of one model (two data seeds of a search that imposes no "
                "profile, `cka_search`); this study has none."
                + (f" `ddpm-lottery study {larger}` compares them." if larger else ""),
            )
        )
    return out


def _unpaired_text(unpaired: list[dict], scale: dict) -> str:
    """(b) when its searches are measured but no level of one has the sparsity of a level of the other."""
    pairs = "; ".join(f"{u['first']} and {u['second']}" for u in unpaired)
    by_boundary = [p for p in scale.get("profiles", []) if any(p["varying"] == u["first"] for u in unpaired)]
    return (
        f"{QUESTIONS['b']}: no level pair, because no level of one search has the sparsity of a level of the "
        f"other ({pairs}): p + j·q prunes more a round than p alone, so their levels interleave. "
        + (
            "Their boundaries compare them: see (f) varying against unified at each rate above."
            if by_boundary
            else "Their boundaries compare them once both are measured past a level worse than dense."
        )
    )


def scale_blocks(scale: dict, decided_by: str = "") -> list[tuple]:
    """(e) width and (f) rate: each search's boundary bracket, and how the brackets of two searches sit;
    ``decided_by`` names the study that decides what overlaps here."""
    if not (scale.get("widths") or scale.get("rates") or scale.get("profiles")):
        return []
    out = [
        (
            "p",
            "**The boundary of each search**: on each data seed, it lies between the sparsest level not worse "
            "than the search's own dense model by every measure and the first level worse by some measure, "
            "by that seed's paired bootstrap over images (so searches with different numbers of seeds compare "
            "like with like; (a) above answers with the interval over the seeds instead), and a search's "
            "bracket holds every seed's. Two searches are separated when their brackets do not overlap; "
            "brackets that overlap are **"
            f"{UNDECIDED}**: finer levels around the boundary, or more data seeds, decide them"
            + (f" (`ddpm-lottery study {decided_by}` has both)." if decided_by else "."),
        ),
        ("list", [bracket_words(b) for b in scale["boundaries"]]),
    ]
    comparisons = (
        (
            "widths",
            "**(e) Width**: the wider network's boundary against the narrower one's:",
            lambda w: (
                f"{w['smaller']} → {w['larger']} ({w['weights'][0]:,} → {w['weights'][1]:,} weights): the "
                f"boundary's sparsity is **{w['sparsity']}**; its surviving weight count is **{w['surviving']}**"
            ),
        ),
        (
            "rates",
            "**(f) Pruning rate**: the paper's gentler rate against 50 % a round:",
            lambda r: (
                f"{r['slower']} (p = {r['rates'][1]:g}) against {r['faster']} (p = {r['rates'][0]:g}): the "
                f"boundary's sparsity is **{r['sparsity']}** at the gentler rate"
            ),
        ),
        (
            "profiles",
            "**(f) varying against unified at each rate** (question (b) by boundaries):",
            lambda p: (
                f"{p['varying']} against {p['plain']} at p = {p['rate']:g}: the boundary's sparsity is "
                f"**{p['sparsity']}** for varying"
            ),
        ),
    )
    for key, heading, item in comparisons:
        if scale.get(key):
            out += [("p", heading), ("list", [item(entry) for entry in scale[key]])]
    out += law_blocks(scale.get("law") or [], LABELS, MEASURE_ORDER)
    projected = scale.get("projection")
    if projected:
        low, high = projected["sparsity_range"]
        out.append(
            (
                "p",
                f"**A projection, not a measurement** (the two-point cross-check of the law above). Fitting "
                f"the boundary's surviving weights S against the "
                f"prunable weights W as S ∝ W^k through {' and '.join(projected['basis'])} gives k = "
                f"{projected['exponent']:.2f} (the brackets' ends allow {projected['exponent_range'][0]:.2f} to "
                f"{projected['exponent_range'][1]:.2f}). At {projected['target']}'s {projected['weights']:,} "
                f"prunable weights that puts the sparsest winning ticket near {100 * projected['sparsity']:.1f} % "
                f"({100 * low:.1f} to {100 * high:.1f} % across that range), beside the paper's claim of "
                f"{projected['claim']}. Two widths fix a line, not a law: "
                "`ddpm-lottery study ddpm-cifar10-widths --dry-run` sizes the GPU study that tests it.",
            )
        )
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
        for name, point in sorted(panel.get("other_dense", {}).items()):  # another width's own dense model
            rows.append([name, cell(point)] + ["" for _ in sparsities])
        for name, points in sorted(panel["curves"].items()):
            at = {p[0]: p[1:] for p in points}
            rows.append([name, ""] + [cell(at[s]) if s in at else "–" for s in sparsities])
        out.append(
            (
                "p",
                f"**Quality by sparsity: {LABELS[measure]}** (Figure 2's numbers; lower is better): "
                f"mean over the data seeds with its {result['confidence']:.0%} interval and, in parentheses, "
                "how many seeds it averages (a t interval over them; with one seed, the bootstrap over "
                "images).",
            )
        )
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
            parts.append(
                "<table><tr>"
                + "".join(f"<th class=l>{inline(h)}</th>" for h in header)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td class=l>{inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
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
        raise UserError(
            f"{path} is neither a study folder (study.json) nor a run folder; give the --out of "
            "`ddpm-lottery study` or a run"
        )
    result = findings(collect(path))
    log(markdown(result))
    return 0


__all__ = [
    "LABELS",
    "MEASURE_ORDER",
    "QUESTIONS",
    "blocks",
    "html",
    "markdown",
    "print_findings",
    "quality_blocks",
    "write_findings",
]
