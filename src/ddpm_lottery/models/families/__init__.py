"""The registry of network families: which family a preset, a stored config or a network belongs to.

A family (:class:`~ddpm_lottery.models.families.family.Family`) owns how its networks are built and checked,
how they are called (:func:`denoise`), what a block is and what is prunable.  Everything outside ``models/``
asks the registry; adding a family is a module here and one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from typing import Any

import torch

from ddpm_lottery.models.families.dit import DIT
from ddpm_lottery.models.families.family import Family
from ddpm_lottery.models.families.unet import UNET
from ddpm_lottery.utils.errors import UserError

#: Every family, the default (the U-Net of every run made before families existed) first.
FAMILIES: tuple[Family, ...] = (UNET, DIT)

#: Every preset of every family: name -> keyword arguments of the family's class.
PRESETS: dict[str, dict[str, Any]] = {name: kwargs for f in FAMILIES for name, kwargs in f.presets.items()}
PRESET_PURPOSE: dict[str, str] = {name: purpose for f in FAMILIES for name, purpose in f.purposes.items()}

#: Layer-name prefixes of the repeated blocks of every family (CKA's "blocks only" halves).
BLOCK_PREFIXES: tuple[str, ...] = tuple(p for f in FAMILIES for p in f.block_prefixes)


def family_of_preset(preset: str) -> Family:
    for family in FAMILIES:
        if preset in family.presets:
            return family
    raise UserError(
        f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (`ddpm-lottery presets` lists them)"
    )


def family_named(class_name: str | None) -> Family:
    """The family of a diffusers class name (config.json's ``_class_name``); None: a U-Net (older runs)."""
    if class_name is None:
        return FAMILIES[0]
    for family in FAMILIES:
        if class_name == family.class_name:
            return family
    raise UserError(
        f"a {class_name} is not a network this tool prunes; it takes {', '.join(f.class_name for f in FAMILIES)}"
    )


def family_of_config(network_config: dict[str, Any]) -> Family:
    """The family of a stored network config (a run's ``network.json``)."""
    return family_named(network_config.get("_class_name"))


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def family_of(model: torch.nn.Module) -> Family:
    """The family of a network (through compile/DDP wrappers; a wrapper of several networks, such as a stage
    schedule, names theirs in its ``family`` attribute)."""
    model = unwrapped(model)
    for family in FAMILIES:
        if isinstance(model, family.model_class()):
            return family
    declared = getattr(model, "family", None)
    if isinstance(declared, Family):
        return declared
    raise UserError(f"a {type(model).__name__} is not a network this tool prunes")


def denoise(
    model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The network's prediction at noisy images ``x``, timesteps ``t`` and class ``labels``.

    None: an unconditional network's call, and a class-conditional network's unconditional prediction (the
    null class K), so that what only traces, counts or times a network calls every network alike."""
    family = family_of(model)
    if labels is None:
        config = getattr(unwrapped(model), "config", None)  # through compile/DDP wrappers
        classes = family.num_classes(config) if config is not None else 0
        if classes:
            labels = torch.full((len(x),), classes, dtype=torch.long, device=x.device)
    return family.denoise(model, x, t, labels)


def from_network_config(network_config: dict[str, Any]) -> torch.nn.Module:
    """A fresh network of a stored config, initialised as its family initialises (global RNG: seed it)."""
    family = family_of_config(network_config)
    return family.build({k: v for k, v in network_config.items() if k != "_class_name"}, from_config=True)
