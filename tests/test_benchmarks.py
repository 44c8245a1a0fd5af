"""The benchmark scripts still start: their imports and arguments follow the package (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py") if p.name != "common.py"
)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
@pytest.mark.slow
def test_benchmark_starts(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=script.parent.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")


def test_every_benchmark_is_covered():
    assert {p.name for p in BENCHMARKS} >= {
        "evaluate.py",
        "pruning.py",
        "sampling.py",
        "train_step.py",
        "validate_measures.py",
    }
