"""The report: one self-contained HTML file (figures embedded as base64 PNG) plus a Markdown table.

It reads only run folders: level metrics, evaluations (``eval/*.json``), costs (``costs.json``,
computed here when missing), CKA results, and the configs and commands that produced them.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import torch

from .errors import UserError
from .runs import atomic_path, read_json


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


def run_label(run: Path) -> str:
    from .lottery import run_kind

    kind = run_kind(run)
    config = read_json(run / "config.json")["config"]
    if kind == "train":
        return f"{run.name} (dense training run)"
    prune = config.get("prune", {})
    if kind.startswith("control-"):
        return f"{kind.split('-', 1)[1]} control of {Path(prune.get('control_of', '?')).name}"
    label = prune.get("strategy", "?")
    if label == "varying" and prune.get("order") == "reverse":
        label += " (reverse order)"
    seed = config.get("train", {}).get("seed_data", 0)
    return f"{label}, data seed {seed} [{run.name}]"


def collect_rows(runs: list[Path], eval_filter: str | None = None) -> list[dict]:
    """One row per (run, level): sparsity, FLOPs, parameters, storage, FID/KID and how they were measured."""
    from .costs import level_costs
    from .evaluation import load_evaluations
    from .lottery import finished_levels, level_dir, run_kind

    rows = []
    for run in runs:
        label = run_label(run)
        for level in finished_levels(run):
            folder = level_dir(run, level) if run_kind(run) != "train" else run
            metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
            costs = read_json(folder / "costs.json") if (folder / "costs.json").exists() else level_costs(run, level)
            evaluations = load_evaluations(run, level)
            if eval_filter:
                evaluations = {k: v for k, v in evaluations.items() if eval_filter in k}
            evaluation = max(evaluations.values(), key=lambda e: e["time"]) if evaluations else None
            rows.append({
                "run": str(run), "label": label, "level": level,
                "sparsity": metrics.get("sparsity", 0.0),
                "flops_reduction": costs["reduction"], "effective_flops": costs["effective_flops"],
                "dense_flops": costs["dense_flops"],
                "surviving_parameters": costs["surviving_parameters"], "dense_parameters": costs["dense_parameters"],
                "sparse_bytes": costs["sparse_bytes"], "dense_bytes": costs["dense_bytes"],
                "evaluation": evaluation,
                "train_wall_s": metrics.get("wall_time_s"),
                "final_loss": (metrics.get("training") or {}).get("final_loss"),
            })
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| run | level | sparsity | FLOPs/call (reduction) | parameters | storage (sparse/dense) | FID | KID ×10³ | "
            "measured with | train time |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    lines = [head]
    for r in rows:
        e = r["evaluation"]
        fid = "–" if e is None else f"{e['fid']:.2f}" + ("†" if e.get("biased_warning") else "")
        kid = "–" if e is None else f"{1000 * e['kid_mean']:.2f} ± {1000 * e['kid_std']:.2f}"
        how = "not evaluated" if e is None else (f"N={e['num_samples']} vs {e['reference_samples']} ref, "
                                                 f"{e['sampler']} {e['steps']} steps, seed {e['seed']}")
        wall = "–" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f} s"
        lines.append(
            f"| {r['label']} | {r['level']} | {100 * r['sparsity']:.1f} % | {r['effective_flops'] / 1e6:.1f} M "
            f"(−{100 * r['flops_reduction']:.1f} %) | {r['surviving_parameters']:,} / {r['dense_parameters']:,} | "
            f"{_fmt_bytes(r['sparse_bytes'])} / {_fmt_bytes(r['dense_bytes'])} | {fid} | {kid} | {how} | {wall} |")
    if any(r["evaluation"] and r["evaluation"].get("biased_warning") for r in rows):
        lines.append("\n† FID at N < 2048 (the feature dimension) is strongly biased upwards: compare only at equal N "
                     "and read KID, which is unbiased.")
    return "\n".join(lines)


def html_table(rows: list[dict]) -> str:
    head = ("<tr><th class=l>run</th><th>level</th><th>sparsity</th><th>FLOPs per call</th><th>FLOPs reduction</th>"
            "<th>parameters (surviving / dense)</th><th>storage (sparse / dense)</th><th>FID</th><th>KID ×10³</th>"
            "<th class=l>measured with</th><th>train time</th></tr>")
    body = []
    for r in rows:
        e = r["evaluation"]
        fid = "–" if e is None else f"{e['fid']:.2f}" + ("<span class=warn>†</span>" if e.get("biased_warning") else "")
        kid = "–" if e is None else f"{1000 * e['kid_mean']:.2f} ± {1000 * e['kid_std']:.2f}"
        how = "not evaluated" if e is None else html.escape(
            f"N={e['num_samples']} vs {e['reference_samples']} reference, {e['sampler']} {e['steps']} steps, "
            f"seed {e['seed']}, {e['weights']} weights")
        wall = "–" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f} s"
        body.append(f"<tr><td class=l>{html.escape(r['label'])}</td><td>{r['level']}</td>"
                    f"<td>{100 * r['sparsity']:.1f} %</td><td>{r['effective_flops'] / 1e6:.1f} M</td>"
                    f"<td>−{100 * r['flops_reduction']:.1f} %</td>"
                    f"<td>{r['surviving_parameters']:,} / {r['dense_parameters']:,}</td>"
                    f"<td>{_fmt_bytes(r['sparse_bytes'])} / {_fmt_bytes(r['dense_bytes'])}</td>"
                    f"<td>{fid}</td><td>{kid}</td><td class=l>{how}</td><td>{wall}</td></tr>")
    note = ("<p class=note><span class=warn>†</span> FID at N &lt; 2048 (the feature dimension) is strongly biased "
            "upwards: compare only at equal N and read KID beside it.</p>"
            if any(r["evaluation"] and r["evaluation"].get("biased_warning") for r in rows) else "")
    return f"<table>{head}{''.join(body)}</table>{note}"


# ----------------------------------------------------------------------------------------------
# Figures made from run folders


def figure_two(rows: list[dict], out: Path) -> Path | None:
    from .figures import fid_vs_sparsity

    curves: dict[str, list] = {}
    dense = None
    measured = [r for r in rows if r["evaluation"]]
    if not measured:
        return None
    for r in measured:
        e = r["evaluation"]
        if r["level"] == 0 and r["sparsity"] == 0.0:
            dense = dense or (e["fid"], e["kid_mean"])
            continue
        curves.setdefault(r["label"], []).append((r["sparsity"], e["fid"], e["kid_mean"], e["kid_std"]))
    e = measured[0]["evaluation"]
    caption = (f"Figure 2. FID and KID against sparsity; N={e['num_samples']} generated vs {e['reference_samples']} "
               f"training images, {e['sampler']} {e['steps']} steps, seed {e['seed']}, {e['weights']} weights"
               + (" (FID at N < 2048 is strongly biased)" if e.get("biased_warning") else ""))
    return fid_vs_sparsity(curves, dense, caption, out)


def _network_and_config(run: Path, level: int):
    from .lottery import level_config, level_network

    return level_network(run, level, "ema"), level_config(run).diffusion


def figure_three(dense: tuple[Path, int], ticket: tuple[Path, int], out: Path, seed: int = 0,
                 steps: int = 50, snapshots: int = 7) -> Path:
    """The denoising process from one noise seed: dense and ticket, DDIM, at evenly spaced timesteps."""
    from .data import from_model_range
    from .diffusion import sample
    from .figures import denoising_process

    rows, chosen_timesteps = [], None
    for (run, level), name in ((dense, "dense"), (ticket, "ticket")):
        model, diffusion = _network_and_config(run, level)
        captured: list[tuple[int, torch.Tensor]] = []
        sample(model, diffusion, sampler="ddim", num_steps=steps, num_samples=1, seed=seed,
               on_intermediate=lambda t, x: captured.append((t, x[0].clone())))
        picks = [round(i * (len(captured) - 1) / (snapshots - 1)) for i in range(snapshots)]
        chosen_timesteps = [captured[i][0] for i in picks]
        sparsity = read_json(run / f"level_{level:02d}" / "metrics.json")["sparsity"] if level else 0.0
        label = f"{name}\n{100 * sparsity:.1f}% sparse"
        rows.append((label, [from_model_range(captured[i][1].clamp(-1, 1)) for i in picks]))
    caption = f"Figure 3. Denoising from one noise seed ({seed}), DDIM {steps} steps, x_t after each shown step, EMA weights"
    return denoising_process(rows, chosen_timesteps, caption, out)


def figure_four(levels: list[tuple[Path, int, str]], out: Path, num_samples: int = 32, seed: int = 0,
                steps: int = 50) -> Path:
    from .data import from_model_range
    from .diffusion import sample
    from .figures import labelled_grids

    grids = []
    for run, level, label in levels:
        model, diffusion = _network_and_config(run, level)
        images = sample(model, diffusion, sampler="ddim", num_steps=steps, num_samples=num_samples, seed=seed)
        grids.append((label, from_model_range(images)))
    caption = f"Figure 4. Samples, {num_samples} per network, DDIM {steps} steps, seed {seed}, EMA weights (same noise)"
    return labelled_grids(grids, caption, out)


def level_loss_curves(run: Path, out: Path) -> Path | None:
    from .figures import loss_curves
    from .lottery import finished_levels, level_dir

    curves = {}
    for level in finished_levels(run):
        path = level_dir(run, level) / "metrics.jsonl"
        if path.exists():
            points = [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines()) if r]
            curves[f"level {level}"] = points
    if not curves:
        return None
    return loss_curves(curves, f"training loss per level: {run_label(run)}", out)


def build_report(runs: list[str | Path], out: str | Path, *, cka_dirs: list[str | Path] = (),
                 eval_filter: str | None = None, title: str = "ddpm-lottery report",
                 intro: str = "", commands: list[str] = (), figure_samples: int = 32, log=print) -> Path:
    """Write OUT (HTML) and OUT with .md (the table); figures go to OUT's folder under figures/."""
    from .figures import module_sparsity_bars
    from .lottery import finished_levels, level_dir, run_kind

    runs = [Path(r) for r in runs]
    if not runs:
        raise UserError("give at least one run folder to report on")
    for run in runs:
        if not finished_levels(run):
            raise UserError(f"{run} has no finished level to report; train it or run find-ticket first")
    out = Path(out)
    if out.suffix.lower() != ".html":
        raise UserError(f"the report is an HTML file: give --out a name ending in .html, not {out.name}")
    figures = out.parent / "figures"
    try:
        figures.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report next to {out} ({exc.strerror}); choose a writable --out") from None
    rows = collect_rows(runs, eval_filter)
    sections = []
    if intro:
        sections.append(("What this is", intro))
    sections.append(("Levels: sparsity, cost and quality", html_table(rows) + (
        "<p class=note>FLOPs per denoiser call are counted by torch.utils.flop_counter on one image; a ticket's are "
        "effective FLOPs (each Conv2d/Linear scaled by its density; attention products, norms and activations as "
        "is). Dense PyTorch kernels do not run faster on zeros. Storage: float32 safetensors of all weights versus "
        "a sparse export (1-bit masks + surviving values).</p>")))
    fig2 = figure_two(rows, figures / "figure2_fid_vs_sparsity.png")
    if fig2:
        sections.append(("Figure 2: quality against sparsity", embed_png(fig2)))
    ticket_runs = [r for r in runs if run_kind(r) == "lottery"]
    if ticket_runs:
        first = ticket_runs[0]
        levels = finished_levels(first)
        fig3 = figure_three((first, 0), (first, levels[-1]), figures / "figure3_denoising.png")
        sections.append(("Figure 3: the denoising process, dense and ticket", embed_png(fig3)))
        picks = [(first, 0, "dense")]
        for run in ticket_runs:
            last = finished_levels(run)[-1]
            sparsity = read_json(level_dir(run, last) / "metrics.json")["sparsity"]
            picks.append((run, last, f"{run_label(run).split(' [')[0]}\n{100 * sparsity:.1f}% sparse"))
        fig4 = figure_four(picks[:5], figures / "figure4_samples.png", num_samples=figure_samples)
        sections.append(("Figure 4: samples of the dense model and tickets", embed_png(fig4)))
        bars = []
        for run in ticket_runs:
            last = finished_levels(run)[-1]
            metrics = read_json(level_dir(run, last) / "metrics.json")
            path = module_sparsity_bars(metrics["per_module"], f"per-module sparsity, level {last}: {run_label(run)}",
                                        figures / f"sparsity_{run.name}.png")
            bars.append(embed_png(path))
        sections.append(("Per-module sparsity (upstream → downstream)", "\n".join(bars)))
        curves = [level_loss_curves(run, figures / f"loss_{run.name}.png") for run in ticket_runs]
        sections.append(("Training loss per level", "\n".join(embed_png(c) for c in curves if c)))
    for cka_dir in cka_dirs:
        cka_dir = Path(cka_dir)
        summary = read_json(cka_dir / "cka.json", "CKA result")
        sections.append(("Figure 1: similarity of two tickets (CKA)", embed_png(cka_dir / "figure1.png") + (
            f"<p class=note>{html.escape(summary['caption'])}. Mean weight CKA (RBF) over the upstream half of the "
            f"layers: {summary['mean_weight_cka_rbf_first_half']:.3f}; downstream half: "
            f"{summary['mean_weight_cka_rbf_second_half']:.3f}. The paper reports higher similarity upstream.</p>")))
    provenance = []
    if commands:
        provenance.append("<p>Commands:</p><pre>" + html.escape("\n".join(commands)) + "</pre>")
    for run in runs:
        stored = read_json(run / "config.json")
        log_path = run / "commands.log"
        logged = log_path.read_text() if log_path.exists() else ""
        provenance.append(f"<details><summary>{html.escape(str(run))}: config {stored['hash']}</summary>"
                          f"<p>non-default settings</p><pre>{html.escape(json.dumps(stored['non_default'], indent=1))}</pre>"
                          + (f"<p>commands run in this folder</p><pre>{html.escape(logged)}</pre>" if logged else "")
                          + f"<p>full config</p><pre>{html.escape(json.dumps(stored['config'], indent=1))}</pre></details>")
    sections.append(("How this was made", "\n".join(provenance)))
    report = write_html(out, title, sections)
    markdown = out.with_suffix(".md")
    with atomic_path(markdown) as tmp:
        tmp.write_text(f"# {title}\n\n{markdown_table(rows)}\n", encoding="utf-8")
    log(f"wrote {report} and {markdown}")
    return report
