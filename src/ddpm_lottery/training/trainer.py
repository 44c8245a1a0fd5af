"""The training loop: Adam with warm-up, grad clipping, EMA, exact resume, data parallelism.

One concept (the step, and its exact resume, which every part of the state takes part in), so one
module past 400 lines.

Determinism by construction: everything random in step ``s`` (which images, their flips,
the timesteps, the noise, dropout) is drawn from generators seeded by ``(seed_data, s)``, and
the learning rate is a pure function of ``s``.  So the state to resume (or to rewind, for
lottery tickets) is just: weights, EMA, Adam moments and the step number, all of which go into
safetensors files.  A resumed run on the CPU reproduces the uninterrupted one bit for bit.

Data parallelism (see :mod:`ddpm_lottery.launch` for the launchers): every process draws the same
*global* batch and noise and keeps its own slice; Accelerate wraps the network in DDP (gloo on CPU,
NCCL on GPU), which averages the gradients, so the update is that of the single-process run with the
same global batch.  Gradient accumulation splits each process's slice into micro-batches of the same
step, so a step stays one optimizer update of the same global batch, and resume stays exact.

Accelerate is used for what it does well: the processes, the DDP wrapper, autocast and the fp16
loss scaler, and the trackers.  Its data loader and its accumulation counter are not: both would
replace the step-seeded draws that make resume and rewinding exact.

Masks (lottery tickets) plug in through :class:`StepHooks`: one call after ``backward`` and one
after ``optimizer.step``, each free to use fused ``torch._foreach_*`` kernels.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ddpm_lottery.config import RunConfig, check_config, config_hash
from ddpm_lottery.config.sections import SEED_MODULUS
from ddpm_lottery.data.images import ImageSet, to_model_range
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.kernels.install import install_kernels
from ddpm_lottery.models.conditioning import adopt_classes, drop_labels
from ddpm_lottery.models.diffusion import noise_scheduler, training_loss
from ddpm_lottery.models.networks import build_model, input_size
from ddpm_lottery.runs.checkpoints import Checkpoints
from ddpm_lottery.runs.level import Level
from ddpm_lottery.training.tracking import Tracking
from ddpm_lottery.utils.clock import WorkClock
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import append_jsonl, make_dirs, read_jsonl, truncate_jsonl
from ddpm_lottery.utils.launch import Processes, setup_processes

# ----------------------------------------------------------------------------------------------
# Deterministic per-step randomness


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A distinct 63-bit seed per (seed, step, stream), stable across runs and machines."""
    mixed = seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB
    return mixed % SEED_MODULUS


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
            chunk = self._permutation(epoch)[offset : offset + needed]
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

    def after_step(self, trainer: Trainer, step: int) -> None:
        """Called after step ``step`` (0-based) is complete; ``trainer.step == step + 1``."""


# ----------------------------------------------------------------------------------------------


class TrainingDiverged(UserError):
    pass


class Trainer:
    """Trains one network in one work folder, resumably."""

    def __init__(
        self,
        config: RunConfig,
        level: Level,
        *,
        images: ImageSet | None = None,
        processes: Processes | None = None,
        hooks: StepHooks | None = None,
        progress: bool = True,
        description: str = "train",
        log=print,
        tracking: Tracking | None = None,
    ):
        self.config = config
        self.level = level
        self.log = log
        self.processes = processes or setup_processes(config.runtime.device, config.train.mixed_precision)
        self.device = self.processes.device
        self.hooks = hooks or StepHooks()
        self.tracking = tracking or Tracking("none", level.dir, level.dir.name)
        self.progress = progress and self.processes.is_main
        self.description = description
        tc = config.train
        check_config(config)  # configs built in code reach here without the declarations' checks
        if tc.batch_size % (self.processes.world_size * tc.grad_accumulation):
            raise UserError(
                f"--batch-size {tc.batch_size} does not split into {self.processes.world_size} "
                f"process(es) x {tc.grad_accumulation} micro-batch(es); choose a multiple of "
                f"{self.processes.world_size * tc.grad_accumulation}"
            )

        self.images = images if images is not None else load_run_images(config)
        adopt_classes(config, self.images)
        channels = self.images.images.shape[1]
        self.model = build_model(config.model, channels, seed=tc.seed_init, image_size=self.images.images.shape[-1]).to(
            self.device
        )
        self._check_image_size()
        self.parameters = [p for p in self.model.parameters()]
        self.names = [n for n, _ in self.model.named_parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=tc.lr, weight_decay=tc.weight_decay, foreach=True)
        self.ema = EMAModel(self.parameters, decay=tc.ema_decay, foreach=True)
        self.scheduler = noise_scheduler(config.diffusion)
        self.order = DataOrder(len(self.images.images), tc.batch_size, tc.seed_data)
        self.data = self.images.images.to(self.device)
        # a class-conditional run's labels; an unconditional run takes none, and draws exactly as before
        self.labels = self.images.labels.to(self.device) if config.model.class_conditional else None
        self.flip = self.images.flip if config.data.flip is None else config.data.flip
        self.step = 0
        self.kernels = "dense"  # which kernels the forward and backward passes run (use_masks may change it)
        self.kernels_before: tuple[str, int] | None = None  # what a resumed checkpoint's sessions ran, to its step
        self.wall_before = 0.0  # training seconds of earlier sessions of this level (from its checkpoint)
        self.clock = WorkClock()  # this session's training seconds, less any time the process was stopped
        accelerator = self.processes.accelerator
        self.wrapped = self.model
        if self.processes.world_size > 1:
            self.wrapped = accelerator.prepare_model(self.model, device_placement=False)
        # fp16 on CUDA: Accelerate's gradient scaler; bf16 and float32 need none
        self.scaler = getattr(accelerator, "scaler", None)
        if tc.compile:
            self.wrapped = torch.compile(self.wrapped)

    def use_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Train a ticket: pruned weights stay zero, with the kernels ``--kernels`` names (auto: dense).

        The choice is recorded with the level (``training.kernels``): the sparse kernels round differently
        in the last bits, and a level's numbers must say which produced them."""
        self.hooks = MaskedTraining(self.model, masks)
        runtime = self.config.runtime
        kept = sum(int(mask.sum()) for mask in masks.values())
        sparsity = 1 - kept / max(1, sum(mask.numel() for mask in masks.values()))
        if runtime.kernels == "sparse" and 0 < sparsity < runtime.sparse_training_from:
            # the sparse backward pass loses to the dense one at moderate sparsity (measured on 2-core CPUs:
            # about 0.7x at 50 %, 1.0x at 75 %, 1.15-1.45x at 87.5 %); the rule reads the mask, not a timing
            self.log(
                f"{self.description}: {sparsity:.1%} sparse, below --sparse-training-from "
                f"{runtime.sparse_training_from:g}: training with the dense kernels"
            )
            runtime = copy.copy(runtime)
            runtime.kernels = "dense"
        report = install_kernels(self.model, runtime, log=self.log, training=True, masks=masks, what=self.description)
        self.kernels = "sparse" if report.sparse_layers and not report.unavailable else "dense"

    def _check_image_size(self) -> None:
        data_size = self.images.images.shape[-1]
        model_size = self.model.config.sample_size
        if data_size != model_size:
            raise UserError(
                f"the images are {data_size}x{data_size} but the network expects {model_size}; "
                f"pass --image-size {model_size} or --sample-size {data_size}"
            )

    # -- state ----------------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor], *, reset_optimizer: bool = True) -> None:
        """Start from given weights (rewinding): fresh Adam moments, EMA reset to these weights."""
        missing = set(self.names) - set(weights)
        if missing:
            raise UserError(
                f"the weights do not match the network (missing {sorted(missing)[:3]}...); "
                "they come from another preset"
            )
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
                entries = {
                    key.rsplit(".", 1)[1]: value
                    for key, value in tensors.items()
                    if key.startswith(f"adam.{name}.") and key.count(".") == name.count(".") + 2
                }
                if entries:
                    self.optimizer.state[param] = {
                        k: v.to(self.device) if k != "step" else v for k, v in entries.items()
                    }
        except (KeyError, RuntimeError) as exc:
            raise UserError(
                f"the checkpoint does not match this network ({str(exc).splitlines()[0]}); "
                "it belongs to another configuration"
            ) from None
        self.ema.optimization_step = int(state["ema_optimization_step"])
        self.step = int(state["step"])

    # -- checkpoints ----------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Checkpoints:
        return self.level.checkpoints

    def save_checkpoint(self) -> None:
        if not self.processes.is_main:
            return
        epoch, offset = divmod(self.step * self.config.train.batch_size, len(self.images.images))
        # Everything else a resume needs is a function of the step: the learning rate, the data order
        # and position, and every random draw (generators seeded by (seed_data, step)).
        state = {
            "ema_optimization_step": int(self.ema.optimization_step),
            "learning_rate_next_step": learning_rate(self.config.train, self.step),
            "data_position": {"epoch": epoch, "offset": offset},
            "random_state": "derived: generators seeded by (seed_data, step)",
            "config_hash": config_hash(self.config),
            "time": time.time(),
            "kernels": self.kernels_so_far(),
            "wall_time_s": self.wall_time(),
        }
        self.checkpoints.save(self.step, self.state_tensors(), state, keep=self.config.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint that verifies; True if there was one."""
        if self.processes.is_main:
            self.checkpoints.clean()
        self.processes.barrier()
        found = self.checkpoints.load_latest(log=self.log)
        if found is None:
            return False
        state, tensors = found
        if state.get("config_hash") != config_hash(self.config):
            raise UserError(
                f"the checkpoints in {self.checkpoints.folder} were written by another configuration; "
                "use a new --out folder"
            )
        self.load_state_tensors(tensors, state)
        self.wall_before = float(state.get("wall_time_s", 0.0))
        self.kernels_before = (str(state.get("kernels", "dense")), self.step)
        if self.processes.is_main:
            truncate_jsonl(self.level.log_path, self.step)
        return True

    # -- the loop -------------------------------------------------------------------------------

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This process's slice of the global batch of step ``step``: (clean, noise, timesteps, labels).

        The labels of a class-conditional run, with the dropped ones (--label-dropout) replaced by the null
        class; None for an unconditional run."""
        tc = self.config.train
        generator = torch.Generator(device=self.device).manual_seed(step_seed(tc.seed_data, step, stream=2))
        indices = self.order.indices(step).to(self.device)
        clean = to_model_range(self.data[indices])
        global_batch = clean.shape[0]
        low, high = tc.timestep_range or (0, self.scheduler.config.num_train_timesteps)
        timesteps = torch.randint(low, high, (global_batch,), generator=generator, device=self.device)
        noise = torch.randn(clean.shape, generator=generator, device=self.device)
        if self.flip:
            flips = torch.rand(global_batch, generator=generator, device=self.device) < 0.5
            clean = torch.where(flips[:, None, None, None], clean.flip(-1), clean)
        labels = None
        if self.labels is not None:
            # drawn last from the step's generator: the draws before it stay those of an unconditional run
            null = self.config.model.num_classes
            labels = drop_labels(self.labels[indices], tc.label_dropout, null, generator)
        local = global_batch // self.processes.world_size
        part = slice(self.processes.rank * local, (self.processes.rank + 1) * local)
        return clean[part], noise[part], timesteps[part], labels[part] if labels is not None else None

    def train_step(self, step: int) -> torch.Tensor:
        tc = self.config.train
        clean, noise, timesteps, labels = self.batch(step)
        # Dropout draws from the global generator: seed it per step so resume is exact.
        torch.manual_seed(step_seed(tc.seed_data, step, stream=3 + self.processes.rank))
        self.wrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = tc.grad_accumulation
        total = torch.zeros((), device=self.device)
        label_parts = labels.chunk(micro) if labels is not None else [None] * micro
        parts = zip(clean.chunk(micro), noise.chunk(micro), timesteps.chunk(micro), label_parts)
        for index, part in enumerate(parts):
            # DDP all-reduces on the last micro-batch only: one all-reduce per step, as without accumulation
            syncing = index == micro - 1 or self.processes.world_size == 1
            with contextlib.nullcontext() if syncing else self.processes.accelerator.no_sync(self.wrapped):
                with self._autocast():
                    loss = training_loss(self.wrapped, self.scheduler, *part)
                self._backward(loss / micro if micro > 1 else loss)
            total += loss.detach()
        self.hooks.after_backward(self.parameters)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, tc.grad_clip, foreach=True)
        lr = learning_rate(tc, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update if the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.hooks.after_optimizer_step(self.parameters)
        self.ema.step(self.parameters)
        return total / micro

    def _autocast(self):
        accelerator = self.processes.accelerator
        return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def run(self, until: int | None = None) -> dict:
        """Train from ``self.step`` to ``until`` (default: ``steps``); returns a summary."""
        tc = self.config.train
        until = tc.steps if until is None else until
        if self.processes.is_main:
            make_dirs(self.level.dir)
            # lines past the starting step were written by a process that died before its next checkpoint
            # (or with no checkpoint at all): this run writes them again
            truncate_jsonl(self.level.log_path, self.step)
        metrics_path = self.level.log_path
        last_good = self.step
        loss_sum = torch.zeros((), device=self.device)
        window = 0
        first_step = self.step
        bar = tqdm(
            total=until,
            initial=self.step,
            disable=not self.progress,
            desc=self.description,
            unit="step",
            dynamic_ncols=True,
            leave=True,
        )
        try:
            with self.clock:
                window_start = self.clock.seconds()
                while self.step < until:
                    step = self.step
                    loss_sum += self.train_step(step)
                    self.clock.mark()
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
                                "or keep --grad-clip on, in a new --out folder"
                            )
                        elapsed = self.clock.seconds() - window_start
                        images_per_s = window * tc.batch_size / max(elapsed, 1e-9)
                        record = {
                            "step": self.step,
                            "loss": mean_loss,
                            "lr": learning_rate(tc, step),
                            "images_per_s": images_per_s,
                            "time": time.time(),
                        }
                        if self.processes.is_main:
                            append_jsonl(metrics_path, record)
                            self.tracking.scalars(
                                {"train/loss": mean_loss, "train/lr": record["lr"], "train/images_per_s": images_per_s},
                                self.step,
                            )
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
                        loss_sum.zero_()
                        window = 0
                        window_start = self.clock.seconds()
                    # before the checkpoint: what a hook saves at this step (theta_tau) must exist whenever
                    # a checkpoint at or after it does, or a kill in between would lose it for good
                    self.hooks.after_step(self, step)
                    if ckpt_now:
                        self.save_checkpoint()
                        self.processes.barrier()
                        last_good = self.step
                    bar.update(1)
        finally:
            bar.close()
        return {
            **self.log_summary(),
            "steps": until,
            "trained_steps": until - first_step,
            "wall_time_s": self.wall_time(),
            "kernels": self.kernels_so_far(),
        }

    def kernels_so_far(self) -> str:
        """The kernels this level trained with; a resume that changed them says where."""
        if self.kernels_before is None or self.kernels_before[0] == self.kernels:
            return self.kernels
        before, step = self.kernels_before
        if before.endswith(f", then {self.kernels}"):
            return before
        return f"{before} to step {step}, then {self.kernels}"

    def wall_time(self) -> float:
        """Seconds this level has trained, over every session that worked on it, less the time a session's
        process was stopped (``kill -STOP``; see :mod:`ddpm_lottery.utils.clock`)."""
        return self.wall_before + self.clock.seconds()

    def log_summary(self) -> dict:
        """First and final logged loss of this level, read from its log (which outlives any process)."""
        records = [r for r in read_jsonl(self.level.log_path) if "loss" in r]
        if not records:
            raise UserError(
                f"{self.level.log_path} holds no logged loss; delete {self.level.dir} and re-run the "
                "command to recompute the level"
            )
        return {"final_loss": records[-1]["loss"], "loss_first": records[0]["loss"], "logged_steps": len(records)}

    def _reduce_mean(self, value: torch.Tensor) -> float:
        if self.processes.world_size > 1:
            value = self.processes.accelerator.reduce(value.clone(), reduction="mean")
        return float(value)


def load_run_images(config: RunConfig) -> ImageSet:
    """The training images at the size the network takes (padded if smaller)."""
    dc = config.data
    return load_dataset(
        dc.dataset,
        dc.data_dir,
        split=dc.split,
        download=dc.download,
        image_size=input_size(config),
        channels=dc.channels,
        mirror=dc.mirror,
    )


class MaskedTraining(StepHooks):
    """Keeps pruned weights exactly zero during training, at the cost of one fused kernel per step.

    The weights are masked once when the level starts (rewinding gives theta_tau * m).  After that
    only the gradients need masking: Adam's moments of a pruned weight start at zero (a fresh
    optimizer every level) and only ever see zero gradients, so its update is exactly zero, and
    coupled weight decay adds ``wd * 0``.  The EMA, reset to the masked weights, averages zeros.
    """

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        unknown = set(masks) - set(params)
        if unknown:
            raise UserError(
                f"the mask names tensors the network does not have ({sorted(unknown)[:2]}); "
                "it belongs to another preset"
            )
        self.params = [params[n] for n in masks]
        device = self.params[0].device if self.params else torch.device("cpu")
        # float multipliers: torch._foreach_mul_ with float lists is the fastest fused path measured
        self.multipliers = [masks[n].to(device=device, dtype=params[n].dtype) for n in masks]

    @torch.no_grad()
    def apply_to_weights(self, tensors: list[torch.Tensor] | None = None) -> None:
        torch._foreach_mul_(tensors if tensors is not None else self.params, self.multipliers)

    def after_backward(self, parameters: list[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            grads, multipliers = zip(*[(g, m) for g, m in zip(grads, self.multipliers) if g is not None]) or ((), ())
            torch._foreach_mul_(list(grads), list(multipliers))
        else:
            torch._foreach_mul_(grads, self.multipliers)
