"""Networks: diffusers' ``UNet2DModel`` through named presets, or from the user's own model.

A preset is a plain dict of ``UNet2DModel`` keyword arguments.  ``in_channels`` left out
means "take it from the data" (the CPU presets serve both digits and colour images).

A *source* replaces the preset: ``--pretrained`` (a ``UNet2DModel`` or ``DDPMPipeline`` folder:
its config, weights and noise schedule) or ``--unet-config`` (a config file, fresh weights).  Its
digest enters the run's identity (``model.source_digest``), so a run follows the model's content,
not the folder's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import hash_file

PRESETS: dict[str, dict[str, Any]] = {
    # Ho et al. 2020, official run_cifar.py; identical to google/ddpm-cifar10-32: 35,746,307 parameters.
    "ddpm-cifar10": dict(
        sample_size=32, in_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        norm_eps=1e-6, norm_num_groups=32, act_fn="silu", time_embedding_type="positional", dropout=0.1,
    ),
    # The same family sized for 28x28 digits: three levels (28 -> 14 -> 7), so no padding is needed.
    "ddpm-mnist": dict(
        sample_size=28, in_channels=1, block_out_channels=(64, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        norm_eps=1e-6, norm_num_groups=32, act_fn="silu", time_embedding_type="positional", dropout=0.1,
    ),
    # CPU presets, sized to train in minutes on two cores: attention at the lowest resolution only.
    "small": dict(
        sample_size=28, block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=8, dropout=0.0,
    ),
    "tiny": dict(
        sample_size=28, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=None, norm_num_groups=8, dropout=0.0,
    ),
}

PRESET_PURPOSE = {
    "ddpm-cifar10": "DDPM CIFAR-10 U-Net (Ho et al. 2020), 32x32x3",
    "ddpm-mnist": "DDPM family sized for 28x28 digits",
    "small": "CPU preset, ~1.5M parameters",
    "tiny": "CPU preset for tests and the quickstart, ~0.3M parameters",
}

_OVERRIDABLE = ("sample_size", "block_out_channels", "layers_per_block", "down_block_types",
                "up_block_types", "dropout", "norm_num_groups")


# ----------------------------------------------------------------------------------------------
# The user's own network


WEIGHT_FILES = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)  # diffusers' file names, safetensors first
# what a pipeline's scheduler says, and the setting of ours that must agree
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")


@dataclass(frozen=True)
class NetworkSource:
    """A UNet2DModel the user brings: its config, where its weights are, its pipeline's scheduler."""

    name: str                  # the path as given, for messages
    config: dict[str, Any]     # UNet2DModel keyword arguments
    unet_dir: Path | None      # folder that UNet2DModel.from_pretrained loads; None: fresh weights
    scheduler: dict[str, Any] | None
    files: tuple[Path, ...]    # what the digest covers


def _read_json(path: Path, what: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{flag} {path.parent}: {path.name} is missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{flag} {path} cannot be read as JSON ({exc}); {what}") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {path} must hold a JSON object; {what}")
    return data


def _unet_config(data: dict[str, Any], path: Path, flag: str) -> dict[str, Any]:
    kind = data.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise UserError(f"{flag} {path} describes a {kind}; this tool prunes diffusers UNet2DModel networks "
                        "(unconditional DDPM U-Nets)")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def network_source(model_config: ModelConfig) -> NetworkSource | None:
    """The source the config names (read from disk), or None for a preset."""
    if model_config.unet_config:
        path = Path(model_config.unet_config)
        if path.is_dir():
            path = path / CONFIG_NAME
        data = _read_json(path, "give a UNet2DModel config.json", "--unet-config")
        return NetworkSource(str(model_config.unet_config), _unet_config(data, path, "--unet-config"), None, None,
                             (path,))
    if not model_config.pretrained:
        return None
    root = Path(model_config.pretrained)
    if not root.is_dir():
        raise UserError(f"--pretrained {root} is not a folder; give a diffusers UNet2DModel folder or a "
                        "DDPMPipeline folder (model_index.json, unet/, scheduler/)")
    scheduler, files = None, []
    if (root / "model_index.json").exists():
        index = _read_json(root / "model_index.json", "give a DDPMPipeline folder", "--pretrained")
        if "unet" not in index:
            raise UserError(f"--pretrained {root}: model_index.json names no unet; give a DDPMPipeline folder")
        files.append(root / "model_index.json")
        unet_dir = root / "unet"
        if (root / "scheduler" / "scheduler_config.json").exists():
            scheduler_path = root / "scheduler" / "scheduler_config.json"
            scheduler = _read_json(scheduler_path, "give the pipeline's scheduler config", "--pretrained")
            files.append(scheduler_path)
    else:
        unet_dir = root
    config_path = unet_dir / CONFIG_NAME
    config = _unet_config(_read_json(config_path, "give a folder written by UNet2DModel.save_pretrained",
                                     "--pretrained"), config_path, "--pretrained")
    weights = [unet_dir / name for name in WEIGHT_FILES if (unet_dir / name).exists()]
    if not weights:
        raise UserError(f"--pretrained {unet_dir} holds no weights ({' or '.join(WEIGHT_FILES)}); give a folder "
                        "written by save_pretrained, or use --unet-config for the architecture alone")
    return NetworkSource(str(root), config, unet_dir, scheduler, (config_path, weights[0], *files))


def source_digest(source: NetworkSource) -> str:
    """SHA-256 over the source's files: config, weights and scheduler."""
    digest = hashlib.sha256()
    for path in source.files:
        digest.update(path.name.encode())
        hash_file(digest, path)
    return digest.hexdigest()[:16]


def adopt_source(config):
    """Fill in a config from the model it names: the digest, and a pipeline's noise schedule.

    A diffusion setting left at its default takes the scheduler's value; one set to something else
    is a conflict, refused (the network was trained for its own schedule)."""
    source = network_source(config.model)
    if source is None:
        return config
    overrides = [name for name in _OVERRIDABLE if getattr(config.model, name) is not None]
    if overrides:
        flag = "--pretrained" if config.model.pretrained else "--unet-config"
        raise UserError(f"{flag} fixes the architecture; drop --{overrides[0].replace('_', '-')}")
    digest = source_digest(source)
    if config.model.source_digest not in (None, digest):
        raise UserError(f"{source.name} has changed since this run was made (digest {digest}, the run was made from "
                        f"{config.model.source_digest}); restore it, or start a new --out folder")
    config.model.source_digest = digest
    if source.scheduler is not None:
        _adopt_scheduler(config.diffusion, source.scheduler, source.name)
    return config


def _adopt_scheduler(diffusion, scheduler: dict[str, Any], name: str) -> None:
    if scheduler.get("trained_betas") is not None:
        raise UserError(f"--pretrained {name}: its scheduler uses trained_betas, which this tool cannot reproduce; "
                        "give a pipeline with a named beta_schedule")
    defaults = {f.name: f.default for f in fields(diffusion)}
    theirs = {"prediction_type": "epsilon", **{k: scheduler[k] for k in SCHEDULER_KEYS if k in scheduler}}
    for key, value in theirs.items():
        ours = getattr(diffusion, key)
        if ours == value:
            continue
        if ours != defaults[key]:
            raise UserError(f"--{key.replace('_', '-')} {ours} differs from the pretrained scheduler's {value} "
                            f"({name}/scheduler); drop the flag to take the scheduler's")
        setattr(diffusion, key, type(defaults[key])(value))
    diffusion.check()


def input_size(config) -> int:
    """The image side a run feeds its network: --image-size, else --sample-size, else the preset's
    (or the source's)."""
    source = network_source(config.model)
    if source is not None:
        return config.data.image_size or source.config.get("sample_size", 32)
    if config.model.preset not in PRESETS:
        raise UserError(f"unknown preset {config.model.preset!r}; choose one of {', '.join(PRESETS)} "
                        "(`ddpm-lottery presets` lists them)")
    return config.data.image_size or config.model.sample_size or PRESETS[config.model.preset]["sample_size"]


def unet_kwargs(model_config: ModelConfig, data_channels: int | None = None,
                image_size: int | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments of a preset with the config's overrides applied.

    ``image_size`` (the data's side) sets the sample size unless ``--sample-size`` overrides it.
    """
    source = network_source(model_config)
    if source is not None:
        return _source_kwargs(source, data_channels, image_size)
    if model_config.preset not in PRESETS:
        raise UserError(f"unknown preset {model_config.preset!r}; choose one of {', '.join(PRESETS)} "
                        "(`ddpm-lottery presets` lists them)")
    kwargs = dict(PRESETS[model_config.preset])
    if image_size is not None:
        kwargs["sample_size"] = image_size
    for name in _OVERRIDABLE:
        value = getattr(model_config, name)
        if value is not None:
            kwargs[name] = value
    preset_channels = kwargs.get("in_channels")
    if preset_channels is None:
        kwargs["in_channels"] = data_channels or 1
    elif data_channels is not None and data_channels != preset_channels:
        raise UserError(
            f"preset {model_config.preset} takes {preset_channels}-channel images but the data has "
            f"{data_channels}; pass --channels {preset_channels} to convert the data, or choose another preset")
    kwargs["out_channels"] = kwargs["in_channels"]
    _check_architecture(kwargs)
    return kwargs


def _source_kwargs(source: NetworkSource, data_channels: int | None, image_size: int | None) -> dict[str, Any]:
    """A source's architecture as it is: the data must fit it, not the other way round."""
    kwargs = dict(source.config)
    channels = kwargs.get("in_channels", 3)
    if data_channels is not None and data_channels != channels:
        raise UserError(f"{source.name} takes {channels}-channel images but the data has {data_channels}; pass "
                        f"--channels {channels} to convert the data")
    size = kwargs.get("sample_size")
    if image_size is not None and size is not None and image_size != size:
        raise UserError(f"{source.name} takes {size}x{size} images but the data is {image_size}x{image_size}; pass "
                        f"--image-size {size}")
    return kwargs


def _check_architecture(kwargs: dict[str, Any]) -> None:
    levels = len(kwargs["block_out_channels"])
    if len(kwargs["down_block_types"]) != levels or len(kwargs["up_block_types"]) != levels:
        raise UserError(f"the U-Net has {levels} levels (block_out_channels) but "
                        f"{len(kwargs['down_block_types'])} down and {len(kwargs['up_block_types'])} up block "
                        "types; give one block type per level")
    groups = kwargs.get("norm_num_groups", 32)
    bad = [c for c in kwargs["block_out_channels"] if c % groups]
    if bad:
        raise UserError(f"channels {bad} are not divisible by norm_num_groups={groups}; "
                        "change --block-out-channels or --norm-num-groups")
    size = kwargs["sample_size"]
    factor = 2 ** (levels - 1)
    if size % factor:
        raise UserError(f"sample size {size} is not divisible by {factor}, which a {levels}-level U-Net "
                        "needs; pick a multiple of it with --image-size / --sample-size")


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the global RNG for weight initialisation without disturbing the caller's RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(model_config: ModelConfig, data_channels: int | None = None, seed: int = 0,
                image_size: int | None = None, initial: str = "config") -> UNet2DModel:
    """The network with its initial weights theta_0: freshly drawn from ``seed`` (the same seed gives
    bit-identical weights), or a ``--pretrained`` model's own weights (``initial="random"``: drawn
    anyway, for the random re-init control)."""
    source = network_source(model_config)  # read once: its config and where its weights are
    kwargs = (_source_kwargs(source, data_channels, image_size) if source is not None
              else unet_kwargs(model_config, data_channels, image_size))
    with seeded(seed):
        try:
            model = UNet2DModel.from_config(kwargs) if source is not None else UNet2DModel(**kwargs)
        except (ValueError, TypeError) as exc:
            raise UserError(f"diffusers rejected the network settings ({exc}); fix the model overrides") from None
    if source is not None and source.unet_dir is not None and initial == "config":
        try:
            pretrained = UNet2DModel.from_pretrained(source.unet_dir, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"--pretrained {source.name}: its weights cannot be loaded "
                            f"({str(exc).splitlines()[0][:200]}); give a folder written by save_pretrained") from None
        model.load_state_dict(pretrained.state_dict())
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
