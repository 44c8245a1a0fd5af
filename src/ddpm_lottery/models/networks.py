"""Networks: a family's named preset (:mod:`ddpm_lottery.models.families`) or the user's own model, built.

A preset is a plain dict of its family's class's keyword arguments (``UNet2DModel``, ``DiTTransformer2DModel``).
``in_channels`` left out means "take it from the data" (the CPU presets serve both digits and colour images).

A *source* (:mod:`ddpm_lottery.models.sources`) replaces the preset: ``--pretrained`` (a ``UNet2DModel``,
``DiTTransformer2DModel`` or ``DDPMPipeline`` folder: its config, weights and noise schedule) or ``--unet-config``
(a config file, fresh weights).  Its digest enters the run's identity (``model.source_digest``), so a run
follows the model's content, not the folder's name.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from diffusers.utils import WEIGHTS_NAME

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.models.families import FAMILIES, PRESETS, family_of_preset
from ddpm_lottery.models.families.family import Family
from ddpm_lottery.models.sources import (
    NetworkSource,
    network_source,
    quiet_loading,
    refused_as_unsafe,
)
from ddpm_lottery.utils.errors import UserError


def network_family(model_config: ModelConfig) -> Family:
    """The family of the network a config names: its source's, else its preset's."""
    source = network_source(model_config)
    return source.family if source is not None else family_of_preset(model_config.preset)


def _preset(name: str) -> dict[str, Any]:
    family_of_preset(name)  # an unknown name is refused in one line
    return PRESETS[name]


def input_size(config) -> int:
    """The image side a run feeds its network: --image-size, else --sample-size, else the preset's
    (or the source's)."""
    source = network_source(config.model)
    if source is not None:
        return config.data.image_size or source.config.get("sample_size", 32)
    return config.data.image_size or config.model.sample_size or _preset(config.model.preset)["sample_size"]


def input_shape(config) -> tuple[int, int]:
    """(channels, side) a run's network sees, without reading the data (a dry run may precede the download)."""
    channels = (
        config.data.channels
        or _preset(config.model.preset).get("in_channels")
        or (3 if config.data.dataset in ("cifar10", "cifar100", "imagefolder") else 1)
    )
    return channels, input_size(config)


def network_kwargs(
    model_config: ModelConfig, data_channels: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """The class's keyword arguments of a preset with the config's overrides applied (or a source's own).

    ``image_size`` (the data's side) sets the sample size unless ``--sample-size`` overrides it.
    """
    source = network_source(model_config)
    if source is not None:
        return _source_kwargs(source, data_channels, image_size)
    family = family_of_preset(model_config.preset)
    kwargs = dict(PRESETS[model_config.preset])
    if image_size is not None:
        kwargs["sample_size"] = image_size
    for other in FAMILIES:
        for name in other.overrides:
            value = getattr(model_config, name)
            if value is None:
                continue
            if name not in family.overrides:
                raise UserError(
                    f"--{name.replace('_', '-')} sets a {other.class_name}; preset {model_config.preset} is a "
                    f"{family.class_name} (its overrides: {', '.join('--' + n.replace('_', '-') for n in family.overrides)})"
                )
            kwargs[name] = value
    preset_channels = kwargs.get("in_channels")
    if preset_channels is None:
        kwargs["in_channels"] = data_channels or 1
    elif data_channels is not None and data_channels != preset_channels:
        raise UserError(
            f"preset {model_config.preset} takes {preset_channels}-channel images but the data has "
            f"{data_channels}; pass --channels {preset_channels} to convert the data, or choose another preset"
        )
    kwargs["out_channels"] = kwargs["in_channels"]
    if model_config.class_conditional:
        kwargs = family.with_classes(kwargs, _class_count(model_config))
    family.check(kwargs, f"preset {model_config.preset}")
    return kwargs


def _class_count(model_config: ModelConfig) -> int:
    """A class-conditional network's number of classes (its family adds the null class of guidance)."""
    if model_config.num_classes is None:
        # filled in from the data when a run starts (models.conditioning.adopt_classes)
        raise UserError("a class-conditional network needs its number of classes; load the run's data first")
    return model_config.num_classes


def _source_kwargs(source: NetworkSource, data_channels: int | None, image_size: int | None) -> dict[str, Any]:
    """A source's architecture as it is: the data must fit it, not the other way round."""
    kwargs = dict(source.config)
    channels = kwargs.get("in_channels", 3)
    if data_channels is not None and data_channels != channels:
        raise UserError(
            f"{source.name} takes {channels}-channel images but the data has {data_channels}; pass "
            f"--channels {channels} to convert the data"
        )
    size = kwargs.get("sample_size")
    if image_size is not None and size is not None and image_size != size:
        raise UserError(
            f"{source.name} takes {size}x{size} images but the data is {image_size}x{image_size}; pass "
            f"--image-size {size}"
        )
    return kwargs


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the global RNG for weight initialisation without disturbing the caller's RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


#: More weights than this (16 GiB in float32) is a mistake, not a network this tool can train.
MAX_PARAMETERS = 2**32


def _construct(family: Family, kwargs: dict[str, Any], source: NetworkSource | None, fix: str) -> torch.nn.Module:
    try:
        return family.build(kwargs, from_config=source is not None)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise UserError(f"diffusers rejected the network settings ({exc}); {fix}") from None


def _check_size(family: Family, kwargs: dict[str, Any], source: NetworkSource | None) -> None:
    """Count the network's weights on the meta device (no memory, no random draws) before building it."""
    fix = f"give --pretrained {source.name} a smaller network" if source else "choose smaller model overrides"
    with torch.device("meta"):
        shape = _construct(family, kwargs, source, fix)
    count = count_parameters(shape)
    if count > MAX_PARAMETERS:
        raise UserError(f"the network would hold {count:,} weights, more than {MAX_PARAMETERS:,}; {fix}")
    if source is not None:
        _check_call(family, shape, kwargs, source)


def _check_call(family: Family, shape: torch.nn.Module, kwargs: dict[str, Any], source: NetworkSource) -> None:
    """One call of the brought network on the meta device (no memory, no arithmetic): it must run as its
    family's denoiser and predict the noise, an image of its input's shape.  Whatever else diffusers lets a
    config describe is refused here in one line, not in a traceback at the first training step."""
    size = kwargs.get("sample_size") or 32
    height, width = (size, size) if isinstance(size, int) else size
    flag = "--pretrained" if source.unet_dir is not None else "--unet-config"
    with torch.device("meta"):
        x = torch.zeros(1, kwargs.get("in_channels", 3), height, width)
        try:
            predicted = family.denoise(shape, x, torch.zeros(1, dtype=torch.long))
        except Exception as exc:  # any failure of the call is a network this tool cannot run
            raise UserError(
                f"{flag} {source.name} cannot run as an unconditional denoiser "
                f"({(str(exc).splitlines() or [type(exc).__name__])[0][:200]}); give an unconditional "
                f"{family.class_name}"
            ) from None
    if predicted.shape != x.shape:
        raise UserError(
            f"{flag} {source.name} turns {tuple(x.shape[1:])} images into {tuple(predicted.shape[1:])}; the noise "
            "it predicts must have the image's shape (out_channels = in_channels)"
        )


def meta_network(model_config: ModelConfig, data_channels: int | None = None) -> torch.nn.Module:
    """The network's shape on the meta device (no memory, no weights drawn): for counting its weights."""
    family = network_family(model_config)
    with torch.device("meta"):
        kwargs = network_kwargs(model_config, data_channels)
        return _construct(family, kwargs, network_source(model_config), "choose smaller model overrides")


def build_model(
    model_config: ModelConfig,
    data_channels: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    initial: str = "config",
) -> torch.nn.Module:
    """The network with its initial weights theta_0: freshly drawn from ``seed`` (the same seed gives
    bit-identical weights), or a ``--pretrained`` model's own weights (``initial="random"``: drawn
    anyway, for the random re-init control)."""
    source = network_source(model_config)  # read once: its config and where its weights are
    if source is not None and model_config.class_conditional:
        raise UserError(
            "--class-conditional adds a label table to a preset's network; a --pretrained or --unet-config "
            "network brings its own architecture, so drop --class-conditional"
        )
    family = source.family if source is not None else family_of_preset(model_config.preset)
    kwargs = (
        _source_kwargs(source, data_channels, image_size)
        if source is not None
        else network_kwargs(model_config, data_channels, image_size)
    )
    _check_size(family, kwargs, source)
    with seeded(seed):
        model = _construct(family, kwargs, source, "fix the model overrides")
    if source is not None and source.unet_dir is not None and initial == "config":
        try:
            with quiet_loading():
                pretrained = family.model_class().from_pretrained(source.unet_dir, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as exc:
            weights = source.files[1]
            if weights.name == WEIGHTS_NAME and refused_as_unsafe(exc):
                raise UserError(
                    f"--pretrained {source.name}: {weights.name} is a pickle that holds more than plain tensors, "
                    "so it was refused unread (no code in it ran); give a folder saved with safetensors"
                ) from None
            raise UserError(
                f"--pretrained {source.name}: its weights cannot be loaded "
                f"({str(exc).splitlines()[0][:300]}); give a folder written by save_pretrained"
            ) from None
        model.load_state_dict(pretrained.state_dict())
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
