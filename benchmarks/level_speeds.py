"""What the sparse kernels saved a study, read from its levels' own training records (nothing is timed).

    python benchmarks/level_speeds.py results/cpu-widths [--runs unified-2x-seed1,unified-p20-seed1]

For each search run of the study folder (or a single run folder) it prints, per pruned level: its
sparsity, the kernels it trained with, its wall time, the median of its logged training throughput
(images/s over each logging window: the median sets aside the windows a pause or a neighbour slowed), that
median's ratio to the run's dense-kernel pruned levels, and the FLOP ratio beside it (the dense model's
FLOPs over the level's, the physical limit of any kernel that skips the zeros).

These are a study's working records, not a benchmark: the windows ran with whatever else shared the cores,
so compare levels of one run (one session, one neighbour), never runs with each other.
`benchmarks/kernels.py` measures the kernels interleaved on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def level_record(level: Path) -> dict | None:
    """One trained level's sparsity, kernels, wall time, median img/s and FLOP limit; None if unfinished."""
    try:
        metrics = json.loads((level / "metrics.json").read_text())
        windows = [json.loads(line) for line in (level / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    throughput = [w["images_per_s"] for w in windows if "images_per_s" in w]
    try:
        reduction = json.loads((level / "costs.json").read_text())["reduction"]
        limit = 1 / (1 - reduction)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        limit = None
    return {
        "level": metrics["level"],
        "sparsity": metrics["sparsity"],
        "kernels": metrics.get("training", {}).get("kernels") or "dense",
        "wall_s": metrics.get("wall_time_s"),
        "images_per_s": statistics.median(throughput) if throughput else None,
        "flop_limit": limit,
    }


def run_table(run: Path) -> list[str]:
    records = [r for r in (level_record(p) for p in sorted(run.glob("level_*"))) if r and r["level"] > 0]
    # level 0 trains from scratch (more steps, no mask): the baseline is the run's dense-kernel pruned levels
    dense = [r["images_per_s"] for r in records if r["kernels"] == "dense" and r["images_per_s"]]
    baseline = statistics.mean(dense) if dense else None
    rows = [f"{run.name} (baseline: the mean of {len(dense)} dense-kernel levels' medians)"]
    rows.append(
        f"  {'level':>5} {'sparsity':>9} {'kernels':>7} {'wall s':>7} {'img/s':>7} {'x dense':>7} {'FLOP limit':>10}"
    )
    for r in records:
        ratio = f"{r['images_per_s'] / baseline:.2f}" if baseline and r["images_per_s"] else "-"
        limit = f"{r['flop_limit']:.1f}" if r["flop_limit"] else "-"
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        rows.append(
            f"  {r['level']:>5} {r['sparsity'] * 100:8.2f}% {r['kernels']:>7} {wall:>7} {speed:>7} {ratio:>7} {limit:>10}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder (with runs/) or one run folder")
    parser.add_argument("--runs", default="", help="comma-separated run names to show [default: every run]")
    args = parser.parse_args(argv)
    runs = (
        sorted(p for p in (args.folder / "runs").glob("*") if p.is_dir())
        if (args.folder / "runs").is_dir()
        else [args.folder]
    )
    wanted = {name for name in args.runs.split(",") if name}
    runs = [r for r in runs if (not wanted or r.name in wanted) and any(r.glob("level_*/metrics.json"))]
    if not runs:
        print(f"error: no trained levels under {args.folder}: give a study folder or a run folder", file=sys.stderr)
        return 2
    for run in runs:
        print("\n".join(run_table(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
