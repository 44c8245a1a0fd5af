"""Every hyperparameter, declared once.

Each setting is a dataclass field with a help string.  From these declarations come:

* the CLI flags (``--batch-size`` for ``batch_size``), with their help and types;
* the config files (TOML or YAML, sectioned ``[train]`` or flat);
* the checks of every value, wherever it comes from (flag, config file, stored run config);
* the run hash: a digest of the *result-affecting* fields that differ from their default,
  so adding a new field with a default keeps existing runs addressable (OpenLTH's rule).

The modules, bottom to top:

* :mod:`~ddpm_lottery.config.fields`: :func:`setting`, a field's type, accepted values and coercion;
* :mod:`~ddpm_lottery.config.sections`: the declared sections (``[data]``, ``[train]``, ...) and
  the names config files give them (:data:`SECTION_CLASSES`, :data:`SHARED_SECTIONS`);
* :mod:`~ddpm_lottery.config.composites`: the commands' configs composed of sections
  (:class:`RunConfig`, :class:`LotteryConfig`, :class:`EvalConfig`, ...);
* :mod:`~ddpm_lottery.config.loading`: config files, overrides, :func:`check_config`, and
  :func:`to_dict`/:func:`from_dict` for stored configs;
* :mod:`~ddpm_lottery.config.identity`: :func:`non_default`, :func:`hashed_keys`, :func:`config_hash`;
* :mod:`~ddpm_lottery.config.flags`: the argparse bridge (:func:`add_arguments`,
  :func:`config_from_args`, :func:`command_line`).

Importing this package is cheap (the standard library and PyYAML, no torch): every command
parses its flags with it before anything heavy is loaded.
"""

from ddpm_lottery.config.composites import (
    Composite,
    EvalConfig,
    FrontierConfig,
    LotteryConfig,
    RunConfig,
    SampleConfig,
    TuneConfig,
    check_unambiguous,
    field_index,
)
from ddpm_lottery.config.fields import CLI_SOURCE, setting
from ddpm_lottery.config.flags import add_arguments, command_line, config_from_args
from ddpm_lottery.config.identity import config_hash, hashed_keys, non_default
from ddpm_lottery.config.loading import (
    apply_overrides,
    changes_results,
    check_config,
    from_dict,
    load_config_file,
    read_config_file,
    to_dict,
)
from ddpm_lottery.config.sections import (
    FILE_SECTIONS,
    MEASURE_NAMES,
    SECTION_CLASSES,
    SHARED_SECTIONS,
    STUDY_TABLES,
    CkaConfig,
    DataConfig,
    DiffusionConfig,
    EvalSettings,
    FrontierSettings,
    ModelConfig,
    PruneConfig,
    RuntimeConfig,
    SampleSettings,
    SamplingConfig,
    Section,
    StudySettings,
    TrainConfig,
    TuneSettings,
    interval_floor,
)

__all__ = [
    "CLI_SOURCE",
    "FILE_SECTIONS",
    "MEASURE_NAMES",
    "SECTION_CLASSES",
    "SHARED_SECTIONS",
    "STUDY_TABLES",
    "CkaConfig",
    "Composite",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "EvalSettings",
    "FrontierConfig",
    "FrontierSettings",
    "LotteryConfig",
    "ModelConfig",
    "PruneConfig",
    "RunConfig",
    "RuntimeConfig",
    "SampleConfig",
    "SampleSettings",
    "SamplingConfig",
    "Section",
    "StudySettings",
    "TrainConfig",
    "TuneConfig",
    "TuneSettings",
    "add_arguments",
    "apply_overrides",
    "changes_results",
    "check_config",
    "check_unambiguous",
    "command_line",
    "config_from_args",
    "config_hash",
    "field_index",
    "from_dict",
    "hashed_keys",
    "interval_floor",
    "load_config_file",
    "non_default",
    "read_config_file",
    "setting",
    "to_dict",
]
