"""Figures written as PNG: sample grids (PIL) and plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lottery.utils.files import atomic_path


def grid_array(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) array with a gray border."""
    count, channels, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    canvas = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 128, dtype=np.uint8
    )
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        canvas[top : top + height, left : left + width] = array[index]
    return canvas


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of uint8 images, upscaled ``scale``x with nearest neighbour for legibility."""
    canvas = grid_array(images, columns)
    mode = "L" if canvas.shape[-1] == 1 else "RGB"
    picture = Image.fromarray(canvas[..., 0] if mode == "L" else canvas, mode=mode)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend)


def pyplot():
    # deferred: matplotlib loads only when a figure is drawn, and with the Agg backend set first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return path


def fid_vs_sparsity(
    curves: dict[str, list[tuple[float, float, float, float]]],
    dense: tuple[float, float] | None,
    caption: str,
    path: str | Path,
) -> Path:
    """Figure 2: FID (left) and KID (right) against sparsity, one curve per run.

    ``curves[label] = [(sparsity, fid, kid_mean, kid_std), ...]``; ``dense = (fid, kid)`` is drawn as a line.
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for label, points in curves.items():
        points = sorted(points)
        xs = [100 * p[0] for p in points]
        left.plot(xs, [p[1] for p in points], "o-", ms=4, label=label)
        right.errorbar(xs, [p[2] for p in points], yerr=[p[3] for p in points], fmt="o-", ms=4, capsize=2, label=label)
    if dense is not None:
        left.axhline(dense[0], color="k", ls=":", lw=1, label="dense")
        right.axhline(dense[1], color="k", ls=":", lw=1, label="dense")
    left.set_ylabel("FID ↓")
    right.set_ylabel("KID ↓ (mean ± std over subsets)")
    for ax in (left, right):
        ax.set_xlabel("sparsity of the prunable weights (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _panel_values(panel: dict) -> list[float]:
    """The values a panel of Figure 2 plots (means, and the dense model's), not their intervals: a t interval
    over two or three seeds can reach far below zero and far above every mean."""
    values = [p[1] for points in panel["curves"].values() for p in points]
    values += [point[0] for point in panel.get("other_dense", {}).values()]
    return values + ([panel["dense"][0]] if panel.get("dense") else [])


def wants_log_scale(panel: dict) -> bool:
    """A panel of Figure 2 whose values span more than 10x: a collapsed ticket can score 15 to 100x the
    others (cpu-digits: held-out loss 0.36 against 0.024), and on a linear axis every other curve would then
    lie flat along the bottom."""
    shown = _panel_values(panel)
    return bool(shown) and min(shown) > 0 and max(shown) / min(shown) > 10


def value_limits(panel: dict, logarithmic: bool) -> tuple[float, float] | None:
    """A panel's y range: its values with a margin. An interval reaching beyond is cut at the frame (the caption
    says so, and the findings' tables give every interval), so one wide interval cannot flatten the rest."""
    shown = _panel_values(panel)
    if not shown:
        return None
    low, high = min(shown), max(shown)
    if logarithmic:
        return low / 1.5, high * 1.5
    margin = 0.15 * (high - low) or 0.1 * abs(high) or 1.0
    return low - margin, high + margin


def _quality_panels(panels: dict[str, dict], caption: str, path: str | Path, x_label: str, x_of, x_log: bool) -> Path:
    """One panel per measure, each curve a search (controls dashed) with its intervals, the dense models as
    lines; ``x_of`` maps a point's first field to the x axis."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.9), dpi=110, squeeze=False)
    for ax, (label, panel) in zip(axes[0], panels.items()):
        for name, points in panel["curves"].items():
            points = sorted(points)
            errors = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            fmt = "o-" if "control" not in name else "s--"
            ax.errorbar([x_of(p[0]) for p in points], [p[1] for p in points], yerr=errors, fmt=fmt, ms=3.5,
                        capsize=2, lw=1.1, label=name)  # fmt: skip
        if panel.get("dense"):
            value, low, high = panel["dense"]
            ax.axhline(value, color="k", ls=":", lw=1, label="dense")
            ax.axhspan(low, high, color="k", alpha=0.08)
        for name, (value, *_) in panel.get("other_dense", {}).items():  # a wider network's own dense model
            ax.axhline(value, color="0.45", ls="-.", lw=1, label=name)
        if x_log:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        logarithmic = wants_log_scale(panel)
        if logarithmic:
            ax.set_yscale("log", nonpositive="clip")
        limits = value_limits(panel, logarithmic)
        if limits:
            ax.set_ylim(*limits)
        ax.set_ylabel(f"{label} ↓" + (" (log scale)" if logarithmic else ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    fig.suptitle("\n".join(textwrap.wrap(caption, 60 * len(panels))), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def quality_vs_sparsity(panels: dict[str, dict], caption: str, path: str | Path) -> Path:
    """Figure 2 of a study: one panel per measure, each search or control a curve, with intervals.

    ``panels[measure label] = {"curves": {label: [(sparsity, value, low, high), ...]},
    "dense": (value, low, high) or None}``; the dense model is a line with its interval as a band.
    """
    return _quality_panels(panels, caption, path, "sparsity of the prunable weights (%)", lambda s: 100 * s, False)


def quality_vs_weights(panels: dict[str, dict], caption: str, path: str | Path) -> Path:
    """Figure 5 of a width study: quality against the surviving prunable weights (log scale), one curve per
    network, so that tickets of different widths sit where their weight counts put them.

    ``panels[measure label] = {"curves": {label: [(surviving weights, value, low, high), ...]}}``; each
    curve's rightmost point is its dense model (every weight surviving).
    """
    return _quality_panels(panels, caption, path, "surviving prunable weights (log scale)", lambda w: w, True)


def law_figure(panels: dict[str, dict], caption: str, path: str | Path) -> Path:
    """The law of a width study: per measure (a column), error against density with one curve per width and
    its fitted curve (top), and every width's error over its dense plateau e_np on m* = w^ψ·d at the fitted
    ψ, where the law puts them on one curve (bottom); log axes.

    ``panels[measure label] = {"curves": {name: [(density, value), ...]}, "fitted": {name: (w, e_np,
    [(density, value), ...])}, "psi": ψ, "determined": bool, "psi_interval": [low, high] or None}``.
    """
    plt = pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 7.2), dpi=110, squeeze=False)
    for column, (label, panel) in enumerate(panels.items()):
        top, bottom = axes[0][column], axes[1][column]
        psi = panel["psi"]
        for index, (name, points) in enumerate(panel["curves"].items()):
            color = f"C{index}"
            width, dense, line = panel["fitted"][name]
            top.plot([p[0] for p in points], [p[1] for p in points], "o", ms=4, color=color, label=name)
            top.plot([p[0] for p in line], [p[1] for p in line], "-", lw=1, color=color)
            collapsed = [(width**psi * p[0], p[1] / dense) for p in points]
            bottom.plot(*zip(*collapsed), "o", ms=4, color=color, label=name)
            bottom.plot(*zip(*[(width**psi * p[0], p[1] / dense) for p in line]), "-", lw=1, color=color)
        top.set_xlabel("density d (fraction of prunable weights kept, log)")
        top.set_ylabel(f"{label} ↓ (log)")
        interval = panel.get("psi_interval")
        spread = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        bottom.set_xlabel(
            f"m* = w^ψ·d, ψ = {psi:.2f}{spread}"
            if panel["determined"]
            else f"m* = w^ψ·d, the best fit's ψ\n(not determined: interval{spread or ' none'})"
        )
        bottom.set_ylabel(f"{label} / e_np (log)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_yscale("log", nonpositive="clip")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6.5)
    fig.suptitle("\n".join(textwrap.wrap(caption, 62 * len(panels))), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def denoising_process(
    rows: list[tuple[str, list[torch.Tensor]]], timesteps: list[int], caption: str, path: str | Path
) -> Path:
    """Figure 3: x_t of several networks from one noise seed, at chosen timesteps (uint8 images)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        len(rows), len(timesteps), figsize=(1.3 * len(timesteps), 1.45 * len(rows)), dpi=110, squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            array = image.permute(1, 2, 0).numpy()
            ax.imshow(array[..., 0] if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {timesteps[c]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(caption, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def labelled_grids(grids: list[tuple[str, torch.Tensor]], caption: str, path: str | Path, columns: int = 8) -> Path:
    """Figure 4: sample grids side by side, each titled (dense, tickets at chosen sparsities)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 2.9), dpi=110, squeeze=False)
    for ax, (label, images) in zip(axes[0], grids):
        canvas = grid_array(images, columns)
        ax.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(caption, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def module_sparsity_bars(per_module: list[dict], title: str, path: str | Path) -> Path:
    """Per-module sparsity of one level, upstream to downstream."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(per_module)), 3.6), dpi=110)
    ax.bar([m["index"] for m in per_module], [100 * m["sparsity"] for m in per_module], color="#4c72b0")
    ax.set_xticks([m["index"] for m in per_module])
    ax.set_xticklabels(
        [
            m["name"]
            .replace("_blocks.", "")
            .replace("resnets.", "r")
            .replace("attentions.", "a")
            .replace("downsamplers.", "ds")
            .replace("upsamplers.", "us")
            for m in per_module
        ],
        rotation=90,
        fontsize=6,
    )
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)  # a long run label must not run off the figure
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def loss_curves(curves: dict[str, list[tuple[int, float]]], title: str, path: str | Path) -> Path:
    """Training loss per level (steps on x; levels after 0 start at the rewind step)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=110)
    for label, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], lw=1, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE loss (ε-prediction)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


_KIND_STYLE = {
    "dense": ("o", "tab:blue"),
    "ticket": ("s", "tab:orange"),
    "channel": ("D", "tab:green"),
    "schedule": ("^", "tab:purple"),
    "schedule control": ("v", "tab:gray"),
}


def frontier_figure(points, measure: str, caption: str, path: str | Path) -> Path:
    """Quality against seconds per sample (left) and FLOPs per sample (right), the Pareto front drawn."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = (
        ("seconds_per_sample", "pareto_seconds", "measured seconds per sample (this machine)"),
        ("effective_flops_per_sample", "pareto_flops", "FLOPs per sample (effective)"),
    )
    for ax, (cost, flag, xlabel) in zip(axes, panels):
        for kind, (marker, colour) in _KIND_STYLE.items():
            chosen = [p for p in points if p.kind == kind]
            if not chosen:
                continue
            x = [getattr(p, cost) for p in chosen]
            y = [p.value for p in chosen]
            err = [[p.value - p.interval[0] for p in chosen], [p.interval[1] - p.value for p in chosen]]
            ax.errorbar(x, y, yerr=err, fmt=marker, color=colour, label=kind, capsize=2, markersize=5, alpha=0.85)
        front = sorted((p for p in points if getattr(p, flag)), key=lambda p: getattr(p, cost))
        if front:
            ax.step(
                [getattr(p, cost) for p in front],
                [p.value for p in front],
                where="post",
                color="black",
                linewidth=1,
                label="Pareto front",
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{measure} (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Efficiency frontier", fontsize=11)
    fig.text(0.5, 0.005, caption, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return save_figure(fig, path)
