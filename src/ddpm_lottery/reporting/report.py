"""The report: one self-contained HTML file (figures embedded as base64 PNG) plus a Markdown table.

It renders what run folders store (through the run model): level metrics, evaluations and the
samples they generated, costs, CKA results, and the configs and commands behind them.  It samples
no network and writes nothing into a run.

One concept (the report page and the figures only it draws), so one module at about 400 lines.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from ddpm_lottery.findings.render import LABELS, MEASURE_ORDER
from ddpm_lottery.findings.render import html as findings_html
from ddpm_lottery.findings.render import markdown as findings_markdown
from ddpm_lottery.findings.scaling_law import figure_panels
from ddpm_lottery.measures.cka import figure_one_over_pairs, read_csv
from ddpm_lottery.measures.evaluate import load_samples, protocol_label, sampling_key
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.outputs import CkaFolder
from ddpm_lottery.runs.records import FrontierRecord, read_record
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.figures import (
    denoising_process,
    fid_vs_sparsity,
    labelled_grids,
    law_figure,
    loss_curves,
    module_sparsity_bars,
    quality_vs_sparsity,
    quality_vs_weights,
)
from ddpm_lottery.utils.files import atomic_path, make_dirs, write_text

_FRONTIER_FIX = "delete the frontier folder and run `ddpm-lottery frontier` again"


def embed_png(path: str | Path, alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt or Path(path).name)}">'


def write_html(out: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write ``sections`` [(heading, inner html)] as one standalone page."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{content}\n</section>" for h, content in sections)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; font-size: .85em; }} td, th {{ border: 1px solid #ccc; padding: .25em .5em; text-align: right; }}
th {{ background: #f3f3f3; }} td.l, th.l {{ text-align: left; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .8em; white-space: pre-wrap; }}
.note {{ color: #555; font-size: .88em; }} .warn {{ color: #a33; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def choose_protocol(runs: list[Run], wanted: str | None = None, measure: str = "inception") -> str | None:
    """The evaluation protocol the report shows: the one that covers the most levels, or the one asked for.

    Measurements made with different protocols (N, sampler, steps, reference) never share a curve.
    """
    coverage: dict[str, int] = {}
    for run in runs:
        for index in run.finished_levels():
            for record in run.level(index).evaluations():
                if record.get("measure") == measure:
                    coverage[record["key"]] = coverage.get(record["key"], 0) + 1
    if wanted:
        matching = [k for k in coverage if wanted in k]
        if not matching:
            raise UserError(
                f"no stored evaluation matches --protocol {wanted!r} (stored: "
                f"{', '.join(sorted(coverage)) or 'none'}); run ddpm-lottery evaluate first"
            )
        coverage = {k: coverage[k] for k in matching}
    if not coverage:
        return None
    return max(sorted(coverage), key=lambda k: coverage[k])


def collect_rows(runs: list[Run], protocol: str | None) -> list[dict]:
    """One row per (run, level): sparsity, stored costs, the evaluation made with ``protocol``."""
    rows = []
    for run in runs:
        for index in run.finished_levels():
            level = run.level(index)
            metrics = level.metrics()
            evaluation = next((r for r in level.evaluations() if r["key"] == protocol), None)
            rows.append(
                {
                    "run": str(run.root),
                    "label": run.label(),
                    "level": index,
                    "sparsity": metrics.get("sparsity", 0.0),
                    "costs": level.costs(),
                    "evaluation": evaluation,
                    "train_wall_s": None if "copied_from" in metrics else metrics.get("wall_time_s"),
                    "copied": "copied_from" in metrics,
                    "final_loss": (metrics.get("training") or {}).get("final_loss"),
                }
            )
    return rows


def _cost_cells(costs: dict | None) -> tuple[str, str, str, str]:
    if costs is None:
        return "not measured", "–", "–", "–"
    return (
        f"{costs['effective_flops'] / 1e6:.1f} M",
        f"−{100 * costs['reduction']:.1f} %",
        f"{costs['surviving_parameters']:,} / {costs['dense_parameters']:,}",
        f"{_fmt_bytes(costs['sparse_bytes'])} / {_fmt_bytes(costs['dense_bytes'])}",
    )


def _wall_cell(row: dict) -> str:
    """Training seconds of a level; a level reused from another run (the shared dense model) cost nothing here."""
    if row.get("copied"):
        return "reused"
    return "–" if row["train_wall_s"] is None else f"{row['train_wall_s']:.0f} s"


def _fid_cell(evaluation: dict) -> str:
    """FID with its bootstrap interval over the generated images, where the record has one."""
    interval = evaluation.get("interval")
    return f"{evaluation['fid']:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| run | level | sparsity | FLOPs/call (reduction) | parameters | storage (sparse/dense) | "
        "FID [bootstrap interval] | KID ×10³ ± std | train time |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        e = r["evaluation"]
        fid = "–" if e is None else _fid_cell(e) + ("†" if e.get("biased_warning") else "")
        kid = "–" if e is None else f"{1000 * e['kid_mean']:.2f} ± {1000 * e['kid_std']:.2f}"
        flops, reduction, params, storage = _cost_cells(r["costs"])
        wall = _wall_cell(r)
        lines.append(
            f"| {r['label']} | {r['level']} | {100 * r['sparsity']:.1f} % | {flops} ({reduction}) | {params} | "
            f"{storage} | {fid} | {kid} | {wall} |"
        )
    if any(r["evaluation"] and r["evaluation"].get("biased_warning") for r in rows):
        lines.append(
            "\n† FID at N < 2048 (the feature dimension) is strongly biased upwards: compare only at equal N "
            "and read KID, which is unbiased."
        )
    return "\n".join(lines)


def html_table(rows: list[dict]) -> str:
    head = (
        "<tr><th class=l>run</th><th>level</th><th>sparsity</th><th>FLOPs per call</th><th>FLOPs reduction</th>"
        "<th>parameters (surviving / dense)</th><th>storage (sparse / dense)</th><th>FID [bootstrap interval]</th>"
        "<th>KID ×10³ ± std</th><th>train time</th></tr>"
    )
    body = []
    for r in rows:
        e = r["evaluation"]
        fid = "–" if e is None else _fid_cell(e) + ("<span class=warn>†</span>" if e.get("biased_warning") else "")
        kid = "–" if e is None else f"{1000 * e['kid_mean']:.2f} ± {1000 * e['kid_std']:.2f}"
        flops, reduction, params, storage = _cost_cells(r["costs"])
        wall = _wall_cell(r)
        body.append(
            f"<tr><td class=l>{html.escape(r['label'])}</td><td>{r['level']}</td>"
            f"<td>{100 * r['sparsity']:.1f} %</td><td>{flops}</td><td>{reduction}</td><td>{params}</td>"
            f"<td>{storage}</td><td>{fid}</td><td>{kid}</td><td>{wall}</td></tr>"
        )
    note = (
        "<p class=note><span class=warn>†</span> FID at N &lt; 2048 (the feature dimension) is strongly biased "
        "upwards: compare only at equal N and read KID beside it.</p>"
        if any(r["evaluation"] and r["evaluation"].get("biased_warning") for r in rows)
        else ""
    )
    return f"<table>{head}{''.join(body)}</table>{note}"


# ----------------------------------------------------------------------------------------------
# Figures rendered from what the runs store


def figure_two(rows: list[dict], protocol_text: str, out: Path) -> Path | None:
    curves: dict[str, list] = {}
    dense = None
    for r in rows:
        e = r["evaluation"]
        if e is None:
            continue
        if r["level"] == 0 and r["sparsity"] == 0.0:
            dense = dense or (e["fid"], e["kid_mean"])
            continue
        curves.setdefault(r["label"], []).append((r["sparsity"], e["fid"], e["kid_mean"], e["kid_std"]))
    if not curves and dense is None:
        return None
    caption = f"Figure 2. FID and KID against sparsity; every point measured alike: {protocol_text}"
    return fid_vs_sparsity(curves, dense, caption, out)


def _count_text(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def study_figure_two(findings: dict, out: Path) -> Path | None:
    """Every measure against sparsity: each search and control the mean over seeds, with its interval."""
    panels = {LABELS[m]: findings["curves"][m] for m in MEASURE_ORDER if m in findings.get("curves", {})}
    if not any(panel["curves"] or panel["dense"] for panel in panels.values()):
        return None
    counts = sorted(
        {n for m in MEASURE_ORDER for n in findings.get("curves", {}).get(m, {}).get("seeds_per_point", [])}
    )
    level = f"{findings['confidence']:.0%}"
    if counts == [1]:
        over = f"one data seed per point, with {level} bootstrap intervals over the images"
    elif counts and counts[0] > 1:
        over = f"mean over {_count_text(counts)} data seeds per point, with {level} t intervals over the seeds"
    else:  # a study part-way: some points have one seed measured, others several
        over = (
            f"mean over the data seeds measured so far ({_count_text(counts)} per point): {level} t intervals over "
            "the seeds, or with one seed the bootstrap interval over the images"
        )
    caption = (
        f"Figure 2. Quality against sparsity: {over}; the dense model is the dotted line and band; an interval "
        "reaching beyond a panel is cut at its edge"
    )
    return quality_vs_sparsity(panels, caption, out)


def study_figure_widths(findings: dict, out: Path) -> Path | None:
    """(e)'s figure: every measure against the surviving weights, one curve per network width."""
    curves = findings.get("surviving_curves") or {}
    panels = {LABELS[m]: curves[m] for m in MEASURE_ORDER if m in curves}
    if not panels:
        return None
    caption = (
        "Figure 5. Quality against surviving prunable weights, one curve per network width (mean over the data "
        f"seeds with {findings['confidence']:.0%} intervals; each curve's rightmost point is its dense model). "
        "Where a wider network's tickets meet the narrower one's curve, the boundary's weight count is the same"
    )
    return quality_vs_weights(panels, caption, out)


def figure_three(levels: list[tuple[Level, str]], out: Path) -> Path | None:
    """The denoising process from one noise seed, as each level stored it when it finished."""
    rows, timesteps, how = [], None, None
    for level, name in levels:
        stored = level.denoising()
        if stored is None:
            continue
        snapshots, timesteps, how = stored
        rows.append((f"{name}\n{100 * level.metrics()['sparsity']:.1f}% sparse", list(snapshots)))
    if not rows:
        return None
    caption = f"Figure 3. Denoising from one noise seed: x_t after each shown step ({how})"
    return denoising_process(rows, timesteps, caption, out)


def figure_four(levels: list[tuple[Level, str]], protocol: str | None, out: Path, num_samples: int = 32) -> Path | None:
    """Samples of each level: the first images of the shown evaluation (same seeds, so the same noise)."""
    grids = []
    for level, label in levels:
        record = next((r for r in level.evaluations() if r["key"] == protocol), None)
        path = level.samples_path(sampling_key(record["protocol"]["sampling"])) if record else None
        if path is None or not path.exists():
            continue
        grids.append((label, load_samples(path)[:num_samples]))
    if not grids:
        return None
    caption = f"Figure 4. The first {num_samples} samples of each network from the evaluation above (same noise)"
    return labelled_grids(grids, caption, out)


def level_loss_curves(run: Run, out: Path) -> Path | None:
    curves = {
        f"level {i}": [(r["step"], r["loss"]) for r in run.level(i).training_log() if "loss" in r]
        for i in run.finished_levels()
    }
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    return loss_curves(curves, f"training loss per level: {run.label()}", out)


def figure_one_of_pairs(cka_dirs: list[str | Path], path: Path) -> Path | None:
    """Figure 1 over a study's ticket pairs, one panel per level (None without CKA folders)."""
    tables: dict[int, list[list[dict]]] = {}
    sparsities: dict[int, float] = {}
    for cka_dir in cka_dirs:
        cka = CkaFolder(Path(cka_dir))
        summary = cka.read_summary()
        tables.setdefault(summary["level"], []).append(read_csv(cka.table))
        sparsities[summary["level"]] = summary["sparsity"][0]
    if not tables:
        return None
    counts = sorted({len(pairs) for pairs in tables.values()})
    title = (
        f"Figure 1. Weight CKA (RBF) of two tickets, layer by layer, over {'/'.join(map(str, counts))} ticket "
        "pairs, against its baseline of two random initialisations under random masks of the same sparsity"
    )
    return figure_one_over_pairs(tables, sparsities, path, title)


def _relative(path: Path, report: Path) -> str:
    """``path`` as a link from the report's folder (absolute when it lies elsewhere on another drive)."""
    try:
        return os.path.relpath(path, report.parent).replace(os.sep, "/")
    except ValueError:
        return str(path)


def build_report(
    runs: list[str | Path],
    out: str | Path,
    *,
    cka_dirs: list[str | Path] = (),
    cka_pairs: list[str | Path] = (),
    protocol: str | None = None,
    title: str = "ddpm-lottery report",
    intro: str = "",
    commands: list[str] = (),
    figure_samples: int = 32,
    findings: dict | None = None,
    log=print,
) -> Path:
    """Write OUT (HTML) and OUT with .md (the table); figures go to OUT's folder under figures/.

    ``cka_dirs`` get a Figure 1 each (one pair of tickets); ``cka_pairs`` (a study's CKA folders, several pairs
    per level) one Figure 1 of their means with baselines.

    The report renders what the runs store (levels, evaluations with their samples, costs, CKA);
    it samples no network and writes nothing into the runs.
    """
    runs = [Run.open(r) for r in runs]
    if not runs:
        raise UserError("give at least one run folder to report on")
    for run in runs:
        if not run.finished_levels():
            raise UserError(f"{run.root} has no finished level to report; train it or run find-ticket first")
    out = Path(out)
    if out.suffix.lower() != ".html":
        raise UserError(f"the report is an HTML file: give --out a name ending in .html, not {out.name}")
    figures = make_dirs(out.parent / "figures")
    chosen = choose_protocol(runs, protocol)
    rows = collect_rows(runs, chosen)
    shown = next((r["evaluation"] for r in rows if r["evaluation"]), None)
    protocol_text = protocol_label(shown) if shown else "no evaluation stored"
    sections = []
    if intro:
        sections.append(("What this is", intro))
    if findings is not None:
        sections.append(("Findings", findings_html(findings)))
        seeds_fig2 = study_figure_two(findings, figures / "figure2_quality_vs_sparsity.png")
        if seeds_fig2:
            sections.append(
                ("Figure 2: quality against sparsity, mean over seeds with intervals", embed_png(seeds_fig2))
            )
        widths_fig = study_figure_widths(findings, figures / "figure5_quality_vs_surviving_weights.png")
        if widths_fig:
            sections.append(("Figure 5: quality against surviving weights, one curve per width", embed_png(widths_fig)))
        for index, entry in enumerate((findings.get("scale") or {}).get("law") or []):
            law_fig = law_figure(
                figure_panels(entry, LABELS, MEASURE_ORDER),
                "Figure 6. Error against density, one curve per width, with the law's fitted curves (top); every "
                "width on m* = w^ψ·d, where the law makes them one curve (bottom). Points: means over the data seeds",
                figures / f"figure6_scaling_law{'' if index == 0 else f'_{index + 1}'}.png",
            )
            sections.append(("Figure 6: the scaling law, per width and collapsed on m*", embed_png(law_fig)))
    missing_costs = [r for r in rows if r["costs"] is None]
    sections.append(
        (
            "Levels: sparsity, cost and quality",
            html_table(rows)
            + (
                f"<p class=note>Quality measured alike for every row: {html.escape(protocol_text)}. Rows without a figure were "
                "not evaluated with this protocol. FLOPs per denoiser call are counted by torch.utils.flop_counter on one "
                "image: the multiply-adds of every Conv2d/Linear plus the attention products; norms, activations and "
                "additions count as zero. A ticket's are effective FLOPs (each Conv2d/Linear scaled by its density). Dense "
                "PyTorch kernels do not run faster on zeros. Storage: float32 safetensors of the weights versus a sparse "
                "export (1-bit masks + surviving values).</p>"
            )
            + (
                "<p class=note>Costs not measured for some levels: run <code>ddpm-lottery flops RUN --all-levels</code>."
                "</p>"
                if missing_costs
                else ""
            ),
        )
    )
    fig2 = (
        seeds_fig2 if findings is not None else figure_two(rows, protocol_text, figures / "figure2_fid_vs_sparsity.png")
    )
    if fig2 and findings is None:
        sections.append(("Figure 2: quality against sparsity", embed_png(fig2)))
    ticket_runs = [r for r in runs if r.kind != "train"]
    if ticket_runs:
        first = ticket_runs[0]
        fig3 = figure_three(
            [(first.level(0), "dense"), (first.last_level(), "ticket")], figures / "figure3_denoising.png"
        )
        if fig3:
            sections.append(("Figure 3: the denoising process, dense and ticket", embed_png(fig3)))
        picks = [(first.level(0), "dense")] + [
            (
                run.last_level(),
                f"{run.label().split(' [')[0]}\n{100 * run.last_level().metrics()['sparsity']:.1f}% sparse",
            )
            for run in ticket_runs
        ]
        sampled = chosen or choose_protocol(runs, measure="domain")  # any measure of generated images
        fig4 = figure_four(picks[:5], sampled, figures / "figure4_samples.png", figure_samples)
        if fig4:
            sections.append(("Figure 4: samples of the dense model and tickets", embed_png(fig4)))
        bars = [
            embed_png(
                module_sparsity_bars(
                    run.last_level().metrics()["per_module"],
                    f"per-module sparsity, level {run.last_level().index}: {run.label()}",
                    figures / f"sparsity_{run.root.name}.png",
                )
            )
            for run in ticket_runs
        ]
        sections.append(("Per-module sparsity (upstream → downstream)", "\n".join(bars)))
        curves = [level_loss_curves(run, figures / f"loss_{run.root.name}.png") for run in ticket_runs]
        sections.append(("Training loss per level", "\n".join(embed_png(c) for c in curves if c)))
    for run in runs:  # the efficiency frontier, where `ddpm-lottery frontier` wrote one
        front = run.frontier_folder()
        if front.record.exists() and front.figure.exists():
            stored = read_record(front.record, FrontierRecord, "frontier", _FRONTIER_FIX, finite=False)
            table = front.table.read_text(encoding="utf-8") if front.table.exists() else ""
            sections.append(
                (
                    f"Efficiency frontier: {run.root.name}",
                    embed_png(front.figure)
                    + (
                        f"<p class=note>{html.escape(stored['how'])}. Written by <code>ddpm-lottery frontier</code>; the table "
                        f"is {html.escape(str(front.table))}:</p><pre>{html.escape(table)}</pre>"
                    ),
                )
            )
    fig1 = figure_one_of_pairs(cka_pairs, figures / "figure1_cka_over_pairs.png")
    if fig1:
        sections.append(
            (
                "Figure 1: similarity of two tickets (CKA), over the ticket pairs",
                embed_png(fig1)
                + (
                    "<p class=note>Each panel one level: per layer, the weight CKA (RBF) of two tickets of one model (one per "
                    "data seed) and its baseline, two fresh initialisations under random masks of the same per-layer "
                    "sparsity; lines are means over the pairs, bands their range. The dotted line splits the layers into "
                    "the upstream and downstream halves the findings' (d) compares.</p>"
                ),
            )
        )
    for cka_dir in cka_dirs:
        cka = CkaFolder(Path(cka_dir))
        summary = cka.read_summary()
        sections.append(
            (
                "Figure 1: similarity of two tickets (CKA)",
                embed_png(cka.figure)
                + (
                    f"<p class=note>{html.escape(summary['caption'])}. Mean weight CKA (RBF) over the upstream half of the "
                    f"layers: {summary['mean_weight_cka_rbf_first_half']:.3f}; downstream half: "
                    f"{summary['mean_weight_cka_rbf_second_half']:.3f}. The paper reports higher similarity upstream.</p>"
                ),
            )
        )
    provenance = []
    if commands:
        provenance.append("<p>Commands:</p><pre>" + html.escape("\n".join(commands)) + "</pre>")
    for run in runs:
        stored = run.stored
        logged = run.commands()
        provenance.append(
            f"<details><summary>{html.escape(str(run.root))}: run {stored['hash']}</summary>"
            f"<p>non-default settings</p><pre>{html.escape(json.dumps(stored['non_default'], indent=1))}</pre>"
            f"<p>training data</p><pre>{html.escape(json.dumps(stored.get('data', {}), indent=1))}</pre>"
            + (f"<p>commands run in this folder</p><pre>{html.escape(logged)}</pre>" if logged else "")
            + f"<p>full config</p><pre>{html.escape(json.dumps(stored['config'], indent=1))}</pre></details>"
        )
    sections.append(("How this was made", "\n".join(provenance)))
    report = write_html(out, title, sections)
    markdown = out.with_suffix(".md")
    # the Markdown twin carries every table of the HTML report (findings first, frontiers last), figures linked
    parts = [f"# {title}\n"]
    if findings is not None:
        parts.append("## Findings\n\n" + findings_markdown(findings))
    if fig2:
        parts.append(f"## Figure 2: quality against sparsity\n\n![Figure 2]({_relative(fig2, out)})\n")
    parts.append(f"## Levels\n\nQuality: {protocol_text}\n\n{markdown_table(rows)}\n")
    if fig1:
        parts.append(
            f"## Figure 1: similarity of two tickets (CKA), over the ticket pairs\n\n"
            f"![Figure 1]({_relative(fig1, out)})\n"
        )
    for cka_dir in cka_dirs:
        cka = CkaFolder(Path(cka_dir))
        parts.append(f"## Figure 1: similarity of two tickets (CKA)\n\n![Figure 1]({_relative(cka.figure, out)})\n")
    for run in runs:
        front = run.frontier_folder()
        if front.table.exists() and front.figure.exists():
            parts.append(
                f"## Efficiency frontier: {run.root.name}\n\n![frontier]({_relative(front.figure, out)})\n\n"
                + front.table.read_text(encoding="utf-8")
            )
    write_text(markdown, "\n".join(parts))
    log(f"wrote {report} and {markdown}")
    return report
