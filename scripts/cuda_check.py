"""Every command's accelerator path at small settings, one pass/fail and timing per check, as JSON.

    bash scripts/cuda-check.sh [--device cuda] [--smoke] [--out cuda-check] [--jobs N]

On a GPU (``--device cuda``, the default) each check runs the ``ddpm-cifar10`` network at small but real
settings, in under 8 minutes in all on one GPU.  ``--device cpu --smoke`` runs the same checks on the
`tiny` network in about a minute (``--jobs 2``), so the test suite runs this script and it cannot rot while no GPU
is at hand.  It writes OUT/cuda-check.json (each check: command, passed, seconds, and the tail of its
output when it failed) and exits 1 if any check failed.

``--jobs N`` runs up to N checks at once, each after the checks it reads from (:data:`NEEDS`): a smoke
run's checks are mostly the start of a Python process, so the test suite runs two at a time on two cores.
The default is one at a time, so that on a GPU each check's seconds are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

# At smoke size on a CPU, inductor would spend minutes compiling: the check runs the --compile wiring with
# dynamo switched off (the record says so); on a GPU it compiles for real.
SMOKE_ENV = {"torch.compile": {"TORCHDYNAMO_DISABLE": "1"}}

# the checks that read what another check wrote: they start once it has finished
_FROM_TICKET = ("sampler ddpm", "sampler ddim", "sampler dpm-solver++", "stage schedule", "--kernels auto")
NEEDS = {
    **dict.fromkeys(_FROM_TICKET, ("find-ticket, two levels",)),
    "Inception FID": ("find-ticket, two levels",),
    "export": ("find-ticket, two levels",),
    "compact": ("channel ticket and compaction",),
    "from_pretrained": ("export",),
}


def checks(device: str, smoke: bool, out: Path) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "ddpm_lottery.cli.main"]
    if smoke:
        net = ["--preset", "tiny", "--block-out-channels", "8,8,8", "--batch-size", "4"]
        steps, fid_n, sample_n = "4", "40", "4"
    else:
        net = ["--preset", "ddpm-cifar10", "--channels", "3", "--image-size", "32", "--batch-size", "128"]
        steps, fid_n, sample_n = "300", "2048", "64"
    common = ["--device", device, "--no-progress"]
    train = [*net, "--steps", steps, "--checkpoint-every", steps, "--log-every", "2", *common]
    ticket = out / "ticket"
    return [
        ("train bf16", [*cli, "train", *train, "--mixed-precision", "bf16", "--out", str(out / "bf16")]),
        (
            "train fp16",
            [*cli, "train", *train, "--mixed-precision", "fp16", "--out", str(out / "fp16")]
            if device != "cpu"
            else [*cli, "train", *train, "--out", str(out / "fp16")],
        ),  # fp16 autocast is CUDA's
        ("torch.compile", [*cli, "train", *train, "--compile", "--out", str(out / "compiled")]),
        (
            "find-ticket, two levels",
            [
                *cli,
                "find-ticket",
                *train,
                "--prune-ratio",
                "0.5",
                "--target-sparsity",
                "0.5",
                "--level-samples",
                "4",
                "--level-sampling-steps",
                "2",
                "--out",
                str(ticket),
            ],
        ),
        (
            "channel ticket and compaction",
            [
                *cli,
                "find-ticket",
                *train,
                "--structure",
                "channel",
                "--prune-ratio",
                "0.5",
                "--target-sparsity",
                "0.5",
                "--level-samples",
                "4",
                "--level-sampling-steps",
                "2",
                "--out",
                str(out / "channels"),
            ],
        ),
        ("compact", [*cli, "compact", str(out / "channels"), "--all-levels"]),
        (
            "sampler ddpm",
            [
                *cli,
                "sample",
                str(ticket),
                "--sampler",
                "ddpm",
                "--sampling-steps",
                "10",
                "--num-samples",
                sample_n,
                *common,
            ],
        ),
        (
            "sampler ddim",
            [
                *cli,
                "sample",
                str(ticket),
                "--sampler",
                "ddim",
                "--sampling-steps",
                "10",
                "--num-samples",
                sample_n,
                *common,
            ],
        ),
        (
            "sampler dpm-solver++",
            [
                *cli,
                "sample",
                str(ticket),
                "--sampler",
                "dpm-solver++",
                "--sampling-steps",
                "10",
                "--num-samples",
                sample_n,
                *common,
            ],
        ),
        (
            "stage schedule",
            [
                *cli,
                "sample",
                str(ticket),
                "--schedule",
                "1000:500=level_00,500:0=level_01",
                "--sampler",
                "ddim",
                "--sampling-steps",
                "10",
                "--num-samples",
                sample_n,
                *common,
            ],
        ),
        (
            "--kernels auto",
            [
                *cli,
                "sample",
                str(ticket),
                "--level",
                "1",
                "--kernels",
                "auto",
                "--sampler",
                "ddim",
                "--sampling-steps",
                "10",
                "--num-samples",
                sample_n,
                *common,
            ],
        ),
        (
            "Inception FID",
            [
                *cli,
                "evaluate",
                str(ticket),
                "--measures",
                "inception",
                "--num-samples",
                fid_n,
                "--reference-samples",
                fid_n,
                "--kid-subset-size",
                str(min(int(fid_n), 1000) // 2),
                "--bootstrap-rounds",
                "40",
                "--sampler",
                "ddim",
                "--sampling-steps",
                "5",
                "--cache-dir",
                str(out / "fid-cache"),
                *common,
            ],
        ),
        ("export", [*cli, "export", str(ticket), "--out", str(out / "pipeline")]),
        (
            "from_pretrained",
            [
                sys.executable,
                "-c",
                "import sys, torch; from diffusers import DDPMPipeline; "
                f"p = DDPMPipeline.from_pretrained(sys.argv[1]).to({device!r}); "
                "images = p(batch_size=2, num_inference_steps=2, output_type='np').images; "
                "assert images.shape[0] == 2",
                str(out / "pipeline"),
            ],
        ),
        (
            "torchrun, one process",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "1",
                "-m",
                "ddpm_lottery.cli.main",
                "train",
                *train,
                "--out",
                str(out / "torchrun"),
            ],
        ),
    ]


def run_check(name: str, command: list[str], args) -> dict:
    """Run one check; its record (the seconds are its own only with --jobs 1)."""
    begun = time.perf_counter()
    extra = SMOKE_ENV.get(name, {}) if args.smoke else {}
    if args.jobs > 1:  # the checks share the cores: each PyTorch process oversubscribing them is 5-40x slower
        extra = {**extra, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=args.timeout,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **extra},
        )
        passed, tail = done.returncode == 0, (done.stdout + done.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        passed, tail = False, f"timed out after {args.timeout:.0f} s"
    result = {
        "check": name,
        "passed": passed,
        "seconds": round(time.perf_counter() - begun, 2),
        "command": " ".join(command[1:] if command[0] == sys.executable else command),
    }
    if extra:
        result["environment"] = extra
    if not passed:
        result["output_tail"] = tail
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="the tiny network and a few steps (CPU tests)")
    parser.add_argument("--out", default="cuda-check")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a check may take")
    parser.add_argument("--jobs", type=int, default=1, help="checks run at once, each after those it reads from")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    commands = checks(args.device, args.smoke, out)
    unknown = {need for needs in NEEDS.values() for need in needs} - {name for name, _ in commands}
    if unknown:  # a check that waits for one that never runs would wait for ever
        raise SystemExit(f"cuda_check: NEEDS names checks that do not exist: {', '.join(sorted(unknown))}")
    results = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        waiting, running = dict(commands), {}
        while waiting or running:
            for name in [n for n in waiting if all(need in results for need in NEEDS.get(n, ()))]:
                running[pool.submit(run_check, name, waiting.pop(name), args)] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                results[running.pop(future)] = result
                print(
                    f"{'pass' if result['passed'] else 'FAIL'}  {result['seconds']:7.1f} s  {result['check']}",
                    flush=True,
                )
    results = [results[name] for name, _ in commands]  # the record lists them in the checks' order
    record = {
        "device": args.device,
        "smoke": args.smoke,
        "jobs": args.jobs,
        "seconds": round(time.perf_counter() - started, 1),
        "passed": sum(r["passed"] for r in results),
        "failed": sum(not r["passed"] for r in results),
        "checks": results,
    }
    temporary = out / ".cuda-check.json.tmp"
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(out / "cuda-check.json")
    print(
        f"{record['passed']} passed, {record['failed']} failed in {record['seconds']:.0f} s; "
        f"wrote {out / 'cuda-check.json'}"
    )
    return 0 if record["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
