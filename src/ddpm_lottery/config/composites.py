"""The commands' configs, composed of sections, and the walk over a config's sections.

A command's config composes sections (:class:`RunConfig`: ``[data]``, ``[model]``, ...), or is a
single section (:class:`~ddpm_lottery.config.sections.CkaConfig`).  The sample, evaluate,
tune-range and frontier configs also read and write flat (:class:`Composite`).  Flags and flat
config keys name a setting without its section, so every setting name is unique across a
config's sections: :func:`check_unambiguous` refuses a config where it is not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from ddpm_lottery.config.fields import _flag
from ddpm_lottery.config.sections import (
    SECTION_CLASSES,
    DataConfig,
    DiffusionConfig,
    EvalSettings,
    FrontierSettings,
    ModelConfig,
    PruneConfig,
    RuntimeConfig,
    SampleSettings,
    SamplingConfig,
    TrainConfig,
    TuneSettings,
)
from ddpm_lottery.utils.errors import UserError


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def check(self) -> None:
        # A dropout rate on an unconditional run would change its hash and nothing else.
        if not self.model.class_conditional and self.train.label_dropout != TrainConfig().label_dropout:
            raise UserError(
                "--label-dropout drops class labels, and this run has none; add --class-conditional or drop it"
            )


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


@dataclass(init=False)
class TuneConfig(Composite):
    """``ddpm-lottery tune-range``: the source run's settings, with these changed."""

    tune: TuneSettings = field(default_factory=TuneSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(init=False)
class FrontierConfig(Composite):
    """``ddpm-lottery frontier``."""

    frontier: FrontierSettings = field(default_factory=FrontierSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ----------------------------------------------------------------------------------------------
# Generic machinery over the declarations above


def _sections(config) -> list[tuple[str, Any]]:
    """(name, section) pairs of a composite config, or [("", config)] for a single section."""
    subs = [
        (f.name, getattr(config, f.name)) for f in fields(config) if dataclasses.is_dataclass(getattr(config, f.name))
    ]
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
                raise TypeError(
                    f"{config_cls.__name__}: {here} and {field_owner[f.name]} share the name {f.name!r}, "
                    "so its flag and flat key are ambiguous; rename one"
                )
            if f.name in section_names:
                raise TypeError(
                    f"{config_cls.__name__}: {here} is named like the section {f.name!r}, so "
                    f"config.{f.name} would name both; rename one"
                )
            field_owner[f.name] = here
            for flag in (_flag(f), *f.metadata.get("aliases", ())):
                if flag in flag_owner:
                    raise TypeError(
                        f"{config_cls.__name__}: {here} and {flag_owner[flag]} both answer to {flag}; "
                        "rename or drop one alias"
                    )
                flag_owner[flag] = here
