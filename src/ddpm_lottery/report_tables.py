"""Plain-text tables of a ticket run, for the terminal and the notes."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .lottery import finished_levels
from .runs import read_json


def sparsity_table(run: str | Path, level: int | None = None) -> str:
    levels = finished_levels(run)
    if not levels:
        raise UserError(f"{run} has no finished level yet; run find-ticket to the end of level 0 first")
    if level is None:
        level = levels[-1]
    if level not in levels:
        raise UserError(f"{run} has no finished level {level}; finished levels: {', '.join(map(str, levels))}")
    m = read_json(Path(run) / f"level_{level:02d}" / "metrics.json", "level metrics")
    lines = [f"{run} level {level} ({m['strategy']}): sparsity {m['sparsity']:.4%} of {m['prunable_parameters']:,} "
             f"prunable weights, {m['sparsity_all_parameters']:.4%} of all {m['total_parameters']:,} parameters",
             f"{'j':>3}  {'module':<34} {'weights':>10} {'kept':>10} {'sparsity':>9}"]
    for row in m["per_module"]:
        lines.append(f"{row['index']:>3}  {row['name']:<34} {row['size']:>10,} {row['kept']:>10,} {row['sparsity']:>9.2%}")
    return "\n".join(lines)


def levels_table(run: str | Path) -> str:
    lines = [f"{'level':>5} {'sparsity':>9} {'all params':>10} {'surviving':>11} {'final loss':>10} {'wall s':>8}"]
    for level in finished_levels(run):
        m = read_json(Path(run) / f"level_{level:02d}" / "metrics.json", "level metrics")
        lines.append(f"{level:>5} {m['sparsity']:>9.2%} {m['sparsity_all_parameters']:>10.2%} "
                     f"{m['surviving_parameters']:>11,} {m['training']['final_loss']:>10.4f} {m['wall_time_s']:>8.1f}")
    return "\n".join(lines)
