"""Plain-text tables of a run, for the terminal and the notes."""

from __future__ import annotations

from pathlib import Path

from ddpm_lottery.runs.run import Run


def sparsity_table(run: str | Path, level: int | None = None) -> str:
    run = Run.open(run)
    chosen = run.pick_level(level)
    m = chosen.metrics()
    lines = [
        f"{run.root} level {chosen.index} ({m['strategy']}): sparsity {m['sparsity']:.4%} of "
        f"{m['prunable_parameters']:,} prunable weights, {m['sparsity_all_parameters']:.4%} of all "
        f"{m['total_parameters']:,} parameters",
        f"{'j':>3}  {'module':<34} {'weights':>10} {'kept':>10} {'sparsity':>9}",
    ]
    for row in m["per_module"]:
        lines.append(
            f"{row['index']:>3}  {row['name']:<34} {row['size']:>10,} {row['kept']:>10,} {row['sparsity']:>9.2%}"
        )
    return "\n".join(lines)
