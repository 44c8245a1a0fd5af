"""Networks the user brings: ``--pretrained`` (a ``UNet2DModel`` or ``DiTTransformer2DModel`` folder, or a
``DDPMPipeline`` folder: its config, weights and noise schedule) or ``--unet-config`` (a config file, fresh weights).

Pixel-space networks only: a latent model (a ``DiTPipeline`` or Stable Diffusion folder, a network whose
input is a VAE's 4-channel latents, a ``UNet2DConditionModel``) is refused in one line that names what is
missing; training and sampling it would need its VAE around every step.

Their config is read as strictly as the flags that would override it, their digest enters the run's
identity, and their weights load through diffusers with its alarming messages held back: a refusal
is our one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.config.fields import checked_value
from ddpm_lottery.models.families import DIT, FAMILIES, family_named
from ddpm_lottery.models.families.family import Family
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import hash_file

#: The settings that override a preset's architecture (and that a brought network fixes itself), every family's.
ARCHITECTURE_SETTINGS = tuple(dict.fromkeys(name for family in FAMILIES for name in family.overrides))

#: What a latent network lacks here, by diffusers class: this tool trains and samples in pixel space.
LATENT_CLASSES = {
    "UNet2DConditionModel": "text/cross-attention conditioning (encoder_hidden_states) and a VAE",
    "DiTPipeline": "a VAE (DiTPipeline denoises VAE latents)",
}
PIXEL_CHANNELS = (1, 3)


# ----------------------------------------------------------------------------------------------
# The user's own network


WEIGHT_FILES = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)  # diffusers' file names, safetensors first
# what a pipeline's scheduler says, and the setting of ours that must agree
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")


@dataclass(frozen=True)
class NetworkSource:
    """A network the user brings: its family and config, where its weights are, its pipeline's scheduler."""

    name: str  # the path as given, for messages
    family: Family
    config: dict[str, Any]  # keyword arguments of the family's class
    unet_dir: Path | None  # folder that the class's from_pretrained loads; None: fresh weights
    scheduler: dict[str, Any] | None
    files: tuple[Path, ...]  # what the digest covers


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


def _network_config(data: dict[str, Any], path: Path, flag: str) -> tuple[Family, dict[str, Any]]:
    kind = data.get("_class_name", "UNet2DModel")
    if kind in LATENT_CLASSES:
        raise UserError(
            f"{flag} {path} describes a {kind}, a latent model: it needs {LATENT_CLASSES[kind]}, which this "
            "pixel-space tool lacks; give a UNet2DModel or DiTTransformer2DModel"
        )
    if kind not in {f.class_name for f in FAMILIES}:
        raise UserError(
            f"{flag} {path} describes a {kind}; this tool prunes diffusers "
            f"{' and '.join(f.class_name for f in FAMILIES)} networks in pixel space"
        )
    family = family_named(kind)
    config = {k: v for k, v in data.items() if not k.startswith("_")}
    conditioning = {k: config[k] for k in ("num_class_embeds", "class_embed_type") if config.get(k) is not None}
    if conditioning:
        raise UserError(
            f"{flag} {path} is a class-conditional UNet2DModel "
            f"({', '.join(f'{k}={v!r}' for k, v in conditioning.items())}); a brought U-Net must be unconditional "
            "(whether its label table holds the null class that guidance needs is unknown): train a conditional "
            "one here with --class-conditional"
        )
    for name in family.overrides:  # bounded exactly as the flags that override them
        if config.get(name) is not None:
            value = checked_value(ModelConfig, name, config[name], str(path))
            config[name] = list(value) if isinstance(value, tuple) else value
    if family is not FAMILIES[0]:  # U-Net configs keep today's checks; others must be pixel-space
        channels = config.get("in_channels", 4)
        if channels not in PIXEL_CHANNELS:
            raise UserError(
                f"{flag} {path}: a {kind} of {channels} input channels denoises a VAE's latents; a latent model "
                "needs its VAE, which this pixel-space tool lacks; give one of 1 or 3 channels"
            )
        family.check(config, f"{flag} {path}")
    return family, config


def network_source(model_config: ModelConfig) -> NetworkSource | None:
    """The source the config names (read from disk), or None for a preset."""
    if model_config.unet_config:
        path = Path(model_config.unet_config)
        if path.is_dir():
            path = path / CONFIG_NAME
        data = _read_json(path, "give a UNet2DModel or DiTTransformer2DModel config.json", "--unet-config")
        family, config = _network_config(data, path, "--unet-config")
        return NetworkSource(str(model_config.unet_config), family, config, None, None, (path,))
    if not model_config.pretrained:
        return None
    root = Path(model_config.pretrained)
    if not root.is_dir():
        raise UserError(
            f"--pretrained {root} is not a folder; give a diffusers UNet2DModel or DiTTransformer2DModel folder, "
            "a DDPMPipeline folder (model_index.json, unet/, scheduler/) or a DiT export (transformer/, scheduler/)"
        )
    scheduler, files = None, []
    if (root / "model_index.json").exists():
        index = _read_json(root / "model_index.json", "give a DDPMPipeline folder", "--pretrained")
        if "vae" in index:
            raise UserError(
                f"--pretrained {root}: a {index.get('_class_name', 'pipeline')} with a VAE is a latent model; this "
                "pixel-space tool lacks the VAE encode/decode around training and sampling; give a UNet2DModel, "
                "DiTTransformer2DModel or DDPMPipeline folder"
            )
        if "unet" not in index:
            raise UserError(f"--pretrained {root}: model_index.json names no unet; give a DDPMPipeline folder")
        files.append(root / "model_index.json")
        unet_dir = root / "unet"
    elif (root / DIT.folder / CONFIG_NAME).exists():  # a DiT export: transformer/ and scheduler/
        unet_dir = root / DIT.folder
    else:
        unet_dir = root
    if unet_dir != root and (root / "scheduler" / "scheduler_config.json").exists():
        scheduler_path = root / "scheduler" / "scheduler_config.json"
        scheduler = _read_json(scheduler_path, "give the pipeline's scheduler config", "--pretrained")
        files.append(scheduler_path)
    config_path = unet_dir / CONFIG_NAME
    family, config = _network_config(
        _read_json(config_path, "give a folder written by save_pretrained", "--pretrained"),
        config_path,
        "--pretrained",
    )
    weights = [unet_dir / name for name in WEIGHT_FILES if (unet_dir / name).exists()]
    if not weights:
        raise UserError(
            f"--pretrained {unet_dir} holds no weights ({' or '.join(WEIGHT_FILES)}); give a folder "
            "written by save_pretrained, or use --unet-config for the architecture alone"
        )
    return NetworkSource(str(root), family, config, unet_dir, scheduler, (config_path, weights[0], *files))


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
    overrides = [name for name in ARCHITECTURE_SETTINGS if getattr(config.model, name) is not None]
    if overrides:
        flag = "--pretrained" if config.model.pretrained else "--unet-config"
        raise UserError(f"{flag} fixes the architecture; drop --{overrides[0].replace('_', '-')}")
    digest = source_digest(source)
    if config.model.source_digest not in (None, digest):
        raise UserError(
            f"{source.name} has changed since this run was made (digest {digest}, the run was made from "
            f"{config.model.source_digest}); restore it, or start a new --out folder"
        )
    config.model.source_digest = digest
    if source.scheduler is not None:
        _adopt_scheduler(config.diffusion, source.scheduler, source.name)
    return config


def _adopt_scheduler(diffusion, scheduler: dict[str, Any], name: str) -> None:
    if scheduler.get("trained_betas") is not None:
        raise UserError(
            f"--pretrained {name}: its scheduler uses trained_betas, which this tool cannot reproduce; "
            "give a pipeline with a named beta_schedule"
        )
    defaults = {f.name: f.default for f in fields(diffusion)}
    theirs = {"prediction_type": "epsilon", **{k: scheduler[k] for k in SCHEDULER_KEYS if k in scheduler}}
    for key, value in theirs.items():
        ours = getattr(diffusion, key)
        if ours == value:
            continue
        if ours != defaults[key]:
            raise UserError(
                f"--{key.replace('_', '-')} {ours} differs from the pretrained scheduler's {value} "
                f"({name}/scheduler); drop the flag to take the scheduler's"
            )
        setattr(diffusion, key, type(defaults[key])(value))
    diffusion.check()


def refused_as_unsafe(exc: BaseException) -> bool:
    """Did torch's weights-only unpickler refuse the file (anywhere in the chain diffusers wraps it in)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if "weights only" in str(seen).lower() or "weights_only" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def quiet_loading():
    """Loading a ``.bin`` makes diffusers log "Defaulting to unsafe serialization" and torch warn about
    pickles, even when the safe loader then refuses the file: our one-line error says what matters."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
