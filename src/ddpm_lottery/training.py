"""The training loop: Adam with warm-up, grad clipping, EMA, exact resume, data parallelism.

Determinism by construction: everything random in step ``s`` (which images, their flips,
the timesteps, the noise, dropout) is drawn from generators seeded by ``(seed_data, s)``, and
the learning rate is a pure function of ``s``.  So the state to resume (or to rewind, for
lottery tickets) is just: weights, EMA, Adam moments and the step number, all of which go into
safetensors files.  A resumed run on the CPU reproduces the uninterrupted one bit for bit.

Data parallelism: launched by ``torchrun``, every process draws the same *global* batch and
noise and keeps its own slice; DDP (gloo on CPU, NCCL on GPU) averages the gradients, so the
update is that of the single-process run with the same global batch.

Masks (lottery tickets) plug in through :class:`StepHooks`: one call after ``backward`` and one
after ``optimizer.step``, each free to use fused ``torch._foreach_*`` kernels.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .config import RunConfig, config_hash
from .data import ImageSet, load_dataset, to_model_range
from .diffusion import noise_scheduler, training_loss
from .errors import UserError
from .networks import build_model, input_size
from .runs import (
    append_jsonl, load_tensors, read_json, replace_dir, save_tensors, truncate_jsonl, write_json,
)

# ----------------------------------------------------------------------------------------------
# Devices and processes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None


@dataclass
class Processes:
    """Where this process stands in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_processes(device_name: str) -> Processes:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Processes(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=device)


# ----------------------------------------------------------------------------------------------
# Deterministic per-step randomness


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (seed, step, stream), stable across runs and machines."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    return mixed % (2**63 - 1)


class DataOrder:
    """The global step's image indices: an endless stream of per-epoch permutations.

    Batch ``s`` covers positions ``[s*B, (s+1)*B)`` of the stream, so the data position is the
    step itself: nothing to save, and rewinding to step tau restores the data order exactly.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int):
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(step_seed(self.seed, epoch, stream=1))
            self._perm, self._epoch = torch.randperm(self.num_images, generator=generator), epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        position, parts, needed = step * self.batch_size, [], self.batch_size
        while needed:
            epoch, offset = divmod(position, self.num_images)
            chunk = self._permutation(epoch)[offset:offset + needed]
            parts.append(chunk)
            needed -= len(chunk)
            position += len(chunk)
        return torch.cat(parts)


def learning_rate(config, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant (DDPM)."""
    if config.warmup_steps <= 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


# ----------------------------------------------------------------------------------------------
# Hooks for masks and for saving states at chosen steps


class StepHooks:
    """Extension points of the training step; the defaults do nothing and cost nothing."""

    def after_backward(self, parameters: list[torch.nn.Parameter]) -> None:
        """Called on the local gradients, after DDP's all-reduce, before clipping."""

    def after_optimizer_step(self, parameters: list[torch.nn.Parameter]) -> None:
        """Called after Adam's update, before the EMA."""

    def after_step(self, trainer: "Trainer", step: int) -> None:
        """Called after step ``step`` (0-based) is complete; ``trainer.step == step + 1``."""


# ----------------------------------------------------------------------------------------------


class TrainingDiverged(UserError):
    pass


class Trainer:
    """Trains one network in one work folder, resumably."""

    def __init__(self, config: RunConfig, work_dir: str | Path, *, images: ImageSet | None = None,
                 processes: Processes | None = None, hooks: StepHooks | None = None,
                 progress: bool = True, description: str = "train"):
        self.config = config
        self.work_dir = Path(work_dir)
        self.processes = processes or setup_processes(config.train.device)
        self.device = self.processes.device
        self.hooks = hooks or StepHooks()
        self.progress = progress and self.processes.is_main
        self.description = description
        tc = config.train
        if tc.steps <= 0:
            raise UserError(f"--steps must be positive, got {tc.steps}")
        if tc.batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {tc.batch_size}")
        if tc.batch_size % self.processes.world_size:
            raise UserError(f"--batch-size {tc.batch_size} is not divisible by the {self.processes.world_size} "
                            "processes; choose a multiple of the process count")
        if not tc.lr > 0 or not math.isfinite(tc.lr):
            raise UserError(f"--lr must be a positive number, got {tc.lr}")
        if not 0.0 <= tc.ema_decay < 1.0:
            raise UserError(f"--ema-decay must be in [0, 1), got {tc.ema_decay}")
        if tc.checkpoint_every <= 0 or tc.log_every <= 0:
            raise UserError("--checkpoint-every and --log-every must be positive")

        self.images = images if images is not None else load_run_images(config)
        channels = self.images.images.shape[1]
        self.model = build_model(config.model, channels, seed=tc.seed_init,
                                 image_size=self.images.images.shape[-1]).to(self.device)
        self._check_image_size()
        self.parameters = [p for p in self.model.parameters()]
        self.names = [n for n, _ in self.model.named_parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=tc.lr, weight_decay=tc.weight_decay,
                                          foreach=True)
        self.ema = EMAModel(self.parameters, decay=tc.ema_decay, foreach=True)
        self.scheduler = noise_scheduler(config.diffusion)
        self.order = DataOrder(len(self.images.images), tc.batch_size, tc.seed_data)
        self.data = self.images.images.to(self.device)
        self.flip = self.images.flip if config.data.flip is None else config.data.flip
        self.step = 0
        self.wrapped = self.model
        if self.processes.world_size > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _check_image_size(self) -> None:
        data_size = self.images.images.shape[-1]
        model_size = self.model.config.sample_size
        if data_size != model_size:
            raise UserError(f"the images are {data_size}x{data_size} but the network expects {model_size}; "
                            f"pass --image-size {model_size} or --sample-size {data_size}")

    # -- state ----------------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor], *, reset_optimizer: bool = True) -> None:
        """Start from given weights (rewinding): fresh Adam moments, EMA reset to these weights."""
        missing = set(self.names) - set(weights)
        if missing:
            raise UserError(f"the weights do not match the network (missing {sorted(missing)[:3]}...); "
                            "they come from another preset")
        with torch.no_grad():
            for name, param in zip(self.names, self.parameters):
                param.copy_(weights[name].to(param.device, param.dtype))
        if reset_optimizer:
            self.optimizer.state.clear()
            self.ema = EMAModel(self.parameters, decay=self.config.train.ema_decay, foreach=True)

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in zip(self.names, self.parameters)}

    def ema_weights(self) -> dict[str, torch.Tensor]:
        return {n: s.detach().clone() for n, s in zip(self.names, self.ema.shadow_params)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{n}": t for n, t in self.weights().items()}
        tensors.update({f"ema.{n}": t for n, t in self.ema_weights().items()})
        for name, param in zip(self.names, self.parameters):
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"adam.{name}.{key}"] = value.detach().clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        try:
            with torch.no_grad():
                for name, param, shadow in zip(self.names, self.parameters, self.ema.shadow_params):
                    param.copy_(tensors[f"model.{name}"])
                    shadow.copy_(tensors[f"ema.{name}"])
            self.optimizer.state.clear()
            for name, param in zip(self.names, self.parameters):
                entries = {key.rsplit(".", 1)[1]: value for key, value in tensors.items()
                           if key.startswith(f"adam.{name}.") and key.count(".") == name.count(".") + 2}
                if entries:
                    self.optimizer.state[param] = {k: v.to(self.device) if k != "step" else v
                                                   for k, v in entries.items()}
        except (KeyError, RuntimeError) as exc:
            raise UserError(f"the checkpoint does not match this network ({str(exc).splitlines()[0]}); "
                            "it belongs to another configuration") from None
        self.ema.optimization_step = int(state["ema_optimization_step"])
        self.step = int(state["step"])

    # -- checkpoints ----------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def save_checkpoint(self, extra: dict | None = None) -> None:
        if not self.processes.is_main:
            return
        name = f"step_{self.step:08d}"
        epoch, offset = divmod(self.step * self.config.train.batch_size, len(self.images.images))
        # Everything else a resume needs is a function of the step: the learning rate, the data order
        # and position, and every random draw (generators seeded by (seed_data, step)).
        state = {"step": self.step, "ema_optimization_step": int(self.ema.optimization_step),
                 "learning_rate_next_step": learning_rate(self.config.train, self.step),
                 "data_position": {"epoch": epoch, "offset": offset},
                 "random_state": "derived: generators seeded by (seed_data, step)",
                 "config_hash": config_hash(self.config), "time": time.time(), **(extra or {})}
        save_tensors(self.checkpoint_dir / f"{name}.safetensors", self.state_tensors())
        write_json(self.checkpoint_dir / f"{name}.json", state)
        write_json(self.checkpoint_dir / "latest.json", {"checkpoint": name, "step": self.step})
        keep = max(1, self.config.train.keep_checkpoints)
        older = sorted(self.checkpoint_dir.glob("step_*.json"))[:-keep]
        for path in older:
            path.unlink(missing_ok=True)
            path.with_suffix(".safetensors").unlink(missing_ok=True)

    def latest_checkpoint(self) -> dict | None:
        pointer = self.checkpoint_dir / "latest.json"
        if not pointer.exists():
            return None
        return read_json(pointer, "checkpoint pointer")

    def resume(self) -> bool:
        """Load the newest checkpoint; True if there was one."""
        latest = self.latest_checkpoint()
        if latest is None:
            return False
        name = latest["checkpoint"]
        state = read_json(self.checkpoint_dir / f"{name}.json", "checkpoint state")
        if state.get("config_hash") != config_hash(self.config):
            raise UserError(f"checkpoint {self.checkpoint_dir / name} was written by another configuration; "
                            "use a new --out folder")
        tensors = load_tensors(self.checkpoint_dir / f"{name}.safetensors")
        self.load_state_tensors(tensors, state)
        if self.processes.is_main:
            truncate_jsonl(self.work_dir / "metrics.jsonl", self.step)
        return True

    # -- the loop -------------------------------------------------------------------------------

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's slice of the global batch of step ``step``: (clean, noise, timesteps)."""
        tc = self.config.train
        generator = torch.Generator(device=self.device).manual_seed(step_seed(tc.seed_data, step, stream=2))
        indices = self.order.indices(step).to(self.device)
        clean = to_model_range(self.data[indices])
        global_batch = clean.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (global_batch,),
                                  generator=generator, device=self.device)
        noise = torch.randn(clean.shape, generator=generator, device=self.device)
        if self.flip:
            flips = torch.rand(global_batch, generator=generator, device=self.device) < 0.5
            clean = torch.where(flips[:, None, None, None], clean.flip(-1), clean)
        local = global_batch // self.processes.world_size
        part = slice(self.processes.rank * local, (self.processes.rank + 1) * local)
        return clean[part], noise[part], timesteps[part]

    def train_step(self, step: int) -> torch.Tensor:
        tc = self.config.train
        clean, noise, timesteps = self.batch(step)
        # Dropout draws from the global generator: seed it per step so resume is exact.
        torch.manual_seed(step_seed(tc.seed_data, step, stream=3 + self.processes.rank))
        self.wrapped.train()
        loss = training_loss(self.wrapped, self.scheduler, clean, noise, timesteps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.hooks.after_backward(self.parameters)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, tc.grad_clip, foreach=True)
        lr = learning_rate(tc, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.hooks.after_optimizer_step(self.parameters)
        self.ema.step(self.parameters)
        return loss.detach()

    def run(self, until: int | None = None) -> dict:
        """Train from ``self.step`` to ``until`` (default: ``steps``); returns a summary."""
        tc = self.config.train
        until = tc.steps if until is None else until
        if self.processes.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.work_dir / "metrics.jsonl"
        last_good = self.step
        loss_sum = torch.zeros((), device=self.device)
        window = 0
        window_start = time.perf_counter()
        started = time.perf_counter()
        first_step = self.step
        bar = tqdm(total=until, initial=self.step, disable=not self.progress, desc=self.description,
                   unit="step", dynamic_ncols=True, leave=False)
        losses: list[tuple[int, float]] = []
        try:
            while self.step < until:
                step = self.step
                loss_sum += self.train_step(step)
                window += 1
                self.step = step + 1
                log_now = self.step % tc.log_every == 0 or self.step == until
                ckpt_now = self.step % tc.checkpoint_every == 0 or self.step == until
                if log_now or ckpt_now:
                    mean_loss = self._reduce_mean(loss_sum / window)
                    if not math.isfinite(mean_loss):
                        raise TrainingDiverged(
                            f"training diverged: the loss became {mean_loss} between steps {self.step - window} "
                            f"and {self.step}; the last good checkpoint (step {last_good}) is kept; lower --lr "
                            "or keep --grad-clip on, in a new --out folder")
                    elapsed = time.perf_counter() - window_start
                    images_per_s = window * tc.batch_size / max(elapsed, 1e-9)
                    record = {"step": self.step, "loss": mean_loss, "lr": learning_rate(tc, step),
                              "images_per_s": images_per_s, "time": time.time()}
                    losses.append((self.step, mean_loss))
                    if self.processes.is_main:
                        append_jsonl(metrics_path, record)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
                    loss_sum.zero_()
                    window = 0
                    window_start = time.perf_counter()
                if ckpt_now:
                    self.save_checkpoint()
                    self.processes.barrier()
                    last_good = self.step
                self.hooks.after_step(self, step)
                bar.update(1)
        finally:
            bar.close()
        wall = time.perf_counter() - started
        return {"steps": until, "trained_steps": until - first_step, "wall_time_s": wall,
                "final_loss": losses[-1][1] if losses else None,
                "loss_first": losses[0][1] if losses else None}

    def _reduce_mean(self, value: torch.Tensor) -> float:
        if self.processes.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.processes.world_size
        return float(value)

    # -- export -------------------------------------------------------------------------------

    def export(self, target: Path, weights: str = "ema") -> None:
        """Write the network as a diffusers folder (``UNet2DModel.from_pretrained`` reads it)."""
        if not self.processes.is_main:
            return
        model = copy.deepcopy(self.model).to("cpu")
        if weights == "ema":
            self.ema.copy_to(list(model.parameters()))
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            replace_dir(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"cannot write {target} ({exc.strerror or exc}); free disk space and re-run") from None


def load_run_images(config: RunConfig) -> ImageSet:
    """The training images at the size the network takes (padded if smaller)."""
    dc = config.data
    return load_dataset(dc.dataset, dc.data_dir, split=dc.split, download=dc.download,
                        image_size=input_size(config), channels=dc.channels, mirror=dc.mirror)

