"""Processes and devices: where a command computes, through ``accelerate.Accelerator``.

Every launch path ends in one ``Accelerator`` per process: a plain ``ddpm-lottery ...``, ``torchrun``,
``accelerate launch --multi_gpu``, and ``accelerate launch`` with a config file.  Accelerate joins the
process group the launcher describes (gloo on CPU, NCCL on GPU), wraps the network for data
parallelism, and provides mixed precision and the experiment trackers.

One gap is closed here.  ``accelerate launch --cpu --num_processes N`` (and a config file with
``distributed_type: MULTI_CPU``) starts N processes only through ``mpirun``; without an MPI host file
it silently starts one.  A run that asked for N processes and got one would train with a different
per-process batch and take N times as long without saying so.  So a training command started that way
restarts itself under PyTorch's own elastic launcher (the one behind ``torchrun``) with the N
processes asked for; and where that is not possible, asking for N and getting fewer is an error.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field

import torch

from ddpm_lottery.utils.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None


@dataclass(frozen=True)
class MachineLoad:
    """How busy the cores this process may run on were: read before a timing, since other work on them
    inflates every second measured (a CPU shared by two PyTorch processes runs each 5 to 40 times slower)."""

    load: float | None  # the 1-minute load average; None where the system has none
    cores: int | None  # the cores this process may run on (a container's or a batch job's share), not the host's

    def busy(self, threads: int) -> bool:
        """Whether other work held the cores that ``threads`` threads of this process needed."""
        if self.load is None or self.cores is None:
            return False
        return self.load > self.cores - threads + 0.5

    def describe(self, threads: int) -> str:
        return f"load average {self.load:.2f} on {self.cores} cores, {threads} threads asked"


def machine_load() -> MachineLoad:
    """The load now, before the caller's own timing adds to it."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineLoad(load, cores)


@dataclass
class Processes:
    """Where this process stands in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    accelerator: object | None = None  # accelerate.Accelerator; None only for processes built by hand in tests

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()


def setup_processes(device_name: str, mixed_precision: str = "no") -> Processes:
    """This process's ``Accelerator``, joined to the process group its launcher describes."""
    # deferred: accelerate takes about a second to import, and only commands that compute start processes
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = resolve_device(device_name)
    if mixed_precision == "fp16" and device.type != "cuda":
        raise UserError("--mixed-precision fp16 needs a CUDA device (CPUs compute in bf16); use bf16 or no")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # Accelerate keeps its settings (mixed precision) in a process-wide singleton; one process may run
    # several commands (the Python API, a study), each with its own settings.
    AcceleratorState._reset_state(reset_partial_state=world_size == 1)
    try:
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision, device_placement=False)
    except (ValueError, RuntimeError) as exc:
        raise UserError(
            f"Accelerate could not set up --mixed-precision {mixed_precision} on {device} "
            f"({str(exc).splitlines()[0]}); use --mixed-precision no"
        ) from None
    if accelerator.num_processes > 1:
        device = accelerator.device
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return Processes(
        rank=accelerator.process_index, world_size=accelerator.num_processes, device=device, accelerator=accelerator
    )


# ----------------------------------------------------------------------------------------------
# What the launcher was asked for


def _accelerate_launch_arguments(command: list[str]):
    """The parsed options of an ``accelerate launch`` command line, or None if it is not one."""
    for index, word in enumerate(command[:-1]):
        name = os.path.basename(word)
        if name in ("accelerate", "accelerate-launch") or word.endswith(
            ("accelerate/commands/launch.py", "accelerate.commands.launch")
        ):
            rest = command[index + 1 :]
            if name == "accelerate":
                if not rest or rest[0] != "launch":
                    return None
                rest = rest[1:]
            # deferred: accelerate's launcher parser is needed only under `accelerate launch`
            from accelerate.commands.launch import launch_command_parser

            try:
                arguments, _ = launch_command_parser().parse_known_args(rest)
            except SystemExit:
                return None
            return arguments
    return None


def _parent_command() -> list[str]:
    try:
        # deferred: psutil (a dependency of Accelerate) is needed only to read the parent command
        import psutil

        return psutil.Process(os.getppid()).cmdline()
    except Exception:  # the parent may be gone or unreadable: then there is nothing to compare
        return []


def requested_processes(parent_command: list[str] | None = None) -> int | None:
    """How many processes ``accelerate launch`` was asked for, when it started this process itself.

    ``torchrun`` and Accelerate's multi-GPU path start what they are asked for and say so in
    ``WORLD_SIZE``; Accelerate's single-process path does not pass the count on, so it is read from
    the launcher's own command line (and its config file) with Accelerate's own parser.
    """
    if "WORLD_SIZE" in os.environ or "ACCELERATE_USE_CPU" not in os.environ:
        return None
    arguments = _accelerate_launch_arguments(parent_command if parent_command is not None else _parent_command())
    if arguments is None:
        return None
    if arguments.num_processes is not None:
        return int(arguments.num_processes)
    config_file = arguments.config_file
    if config_file is None:
        # deferred: accelerate's config files matter only under `accelerate launch`
        from accelerate.commands.config.config_args import default_config_file

        config_file = default_config_file if os.path.isfile(default_config_file) else None
    if config_file is None:
        return None
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        return int(load_config_from_file(config_file).num_processes)
    except Exception as exc:
        raise UserError(
            f"cannot read the Accelerate config {config_file} ({exc}); fix it or pass --num_processes"
        ) from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_requested_processes(device_name: str, argv: list[str], log=print) -> None:
    """Start the processes a launcher was asked for but did not start, or refuse (never fall back)."""
    asked = requested_processes()
    if asked is None or asked <= 1:
        return
    if resolve_device(device_name).type == "cuda":
        raise UserError(
            f"accelerate launch asked for {asked} processes but started 1; on GPUs pass --multi_gpu "
            f"(accelerate launch --multi_gpu --num_processes {asked} ...)"
        )
    log(
        f"accelerate launch asked for {asked} CPU processes and started 1 (it needs mpirun for more); "
        f"starting {asked} with PyTorch's elastic launcher"
    )
    sys.stdout.flush()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(asked),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "ddpm_lottery.cli.main",
        *argv,
    ]
    os.execv(sys.executable, command)
