"""What the benchmark scripts share: timing and a trainer on random images of a preset's shape."""

from __future__ import annotations

import time

import torch

from ddpm_lottery.config import LotteryConfig
from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.models.networks import PRESETS
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.trainer import Trainer

# batch sizes that fit a 2-core CPU's time budget
BATCH = {"tiny": 64, "small": 64, "ddpm-mnist": 32, "ddpm-cifar10": 16}


# what the benchmarks time by: "wall" (an idle machine's figure) or "thread", the CPU seconds of the
# calling thread, which a shared machine's other work barely moves; valid at 1 thread only, where every
# kernel runs in the calling thread (a process clock would count the thread pools' idle spinning too)
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def seconds(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def interleaved_minimum(first, second, repeats: int, clock: str = "wall") -> tuple[float, float]:
    """Best time of each of two callables, interleaved (alternating which goes first) after two
    warm-up calls each, so drifts of the machine's speed hit both alike."""
    best_first, best_second = interleaved_minima([first, second], repeats, clock)
    return best_first, best_second


def interleaved_minima(calls, repeats: int, clock: str = "wall") -> list[float]:
    """Best time of each callable, interleaved (each repeat in another rotation of the order) after two
    warm-up calls each, so drifts of the machine's speed hit them all alike."""
    for _ in range(2):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for index in range(repeats):
        shift = index % len(calls)
        for position in range(len(calls)):
            slot = (position + shift) % len(calls)
            times[slot].append(seconds(calls[slot], CLOCKS[clock]))
    return [min(bucket) for bucket in times]


def random_data_trainer(preset: str, workdir: str, images: int = 256) -> Trainer:
    """A CPU trainer of ``preset`` on random uint8 images of its input shape (timing only)."""
    size = PRESETS[preset]["sample_size"]
    channels = PRESETS[preset].get("in_channels") or 1
    data = torch.randint(0, 256, (images, channels, size, size), dtype=torch.uint8)
    config = LotteryConfig()
    config.model.preset = preset
    config.train.batch_size = BATCH[preset]
    config.train.steps = 10**6
    config.runtime.device = "cpu"
    return Trainer(
        config, Run(workdir, {}).level(0), images=ImageSet(data, None, "random", "benchmark", False), progress=False
    )


def cpu_description() -> str:
    """The CPU as the two sides see it: LLVM's name for it (numba compiles for it) and the instruction set
    PyTorch's kernels dispatch to, since the ratios differ between CPUs (oneDNN is far faster with AVX-512)."""
    import llvmlite.binding as llvm

    return f"CPU {llvm.get_host_cpu_name()}, PyTorch kernels {torch.backends.cpu.get_cpu_capability()}"
