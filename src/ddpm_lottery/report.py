"""The HTML report: one self-contained file (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .runs import atomic_path


def embed_png(path: str | Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def loss_curve(metrics_path: Path, out: Path, title: str) -> Path | None:
    """Training-loss curve from a run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        points.append((record["step"], record["loss"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE loss (ε-prediction)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def write_html(out: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write ``sections`` [(heading, inner html)] as one standalone page."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{content}\n</section>" for h, content in sections)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
table {{ border-collapse: collapse; font-size: .9em; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; image-rendering: pixelated; }}
pre {{ background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }}
.note {{ color: #555; font-size: .9em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
