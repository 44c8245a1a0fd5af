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
import statistics
import sys
from pathlib import Path

from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError


def level_record(level) -> dict:
    """One finished level's sparsity, kernels, wall time, median img/s and FLOP limit, from its records."""
    metrics = level.metrics()
    throughput = [w["images_per_s"] for w in level.training_log() if "images_per_s" in w]
    costs = level.costs()
    return {
        "level": level.index,
        "sparsity": metrics["sparsity"],
        "kernels": metrics["training"].get("kernels") or "dense",
        "wall_s": metrics["wall_time_s"],
        "images_per_s": statistics.median(throughput) if throughput else None,
        "flop_limit": 1 / (1 - costs["reduction"]) if costs and costs["reduction"] < 1 else None,
    }


def run_table(run: Run) -> list[str]:
    records = [level_record(run.level(index)) for index in run.finished_levels() if index > 0]
    # level 0 trains from scratch (more steps, no mask): the baseline is the run's dense-kernel pruned levels
    dense = [r["images_per_s"] for r in records if r["kernels"] == "dense" and r["images_per_s"]]
    baseline = statistics.mean(dense) if dense else None
    rows = [f"{run.root.name} (baseline: the mean of {len(dense)} dense-kernel levels' medians)"]
    rows.append(
        f"  {'level':>5} {'sparsity':>9} {'kernels':>7} {'wall s':>7} {'img/s':>7} {'x dense':>7} {'FLOP limit':>10}"
    )
    for r in records:
        ratio = f"{r['images_per_s'] / baseline:.2f}" if baseline and r["images_per_s"] else "-"
        limit = f"{r['flop_limit']:.1f}" if r["flop_limit"] else "-"
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        rows.append(
            f"  {r['level']:>5} {r['sparsity'] * 100:8.2f}% {r['kernels']:>7} {r['wall_s']:>7.0f} {speed:>7} {ratio:>7} {limit:>10}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder (with runs/) or one run folder")
    parser.add_argument("--runs", default="", help="comma-separated run names to show [default: every run]")
    args = parser.parse_args(argv)
    runs_dir = args.folder / "runs"
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else [args.folder]
    wanted = {name for name in args.runs.split(",") if name}
    try:
        runs = [Run.open(f) for f in folders if (not wanted or f.name in wanted) and Run.is_run(f)]
        runs = [run for run in runs if run.finished_levels()]
        if not runs:
            raise UserError(f"no trained levels under {args.folder}: give a study folder or a run folder")
        for run in runs:
            print("\n".join(run_table(run)))
    except UserError as error:  # a missing or corrupt record: one line that names it and the fix
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
