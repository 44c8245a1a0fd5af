"""Every registry against the choices its setting allows.

The settings are declared in the lowest layer (``config``), the registries that implement each choice
in the layers above (a strategy in ``pruning``, a measure in ``measures``, a control in ``lottery``), so
neither can import the other's list. These tests hold the two together: a choice without an
implementation, or an implementation no setting can reach, fails here rather than at a user's run."""

import dataclasses
import typing

import pytest

from ddpm_lottery.config import sections


def choices(section: type, name: str) -> tuple:
    (field,) = [f for f in dataclasses.fields(section) if f.name == name]
    return field.metadata["choices"]


def test_every_strategy_choice_has_a_strategy():
    from ddpm_lottery.lottery.controls import CONTROLS
    from ddpm_lottery.pruning.strategies import STRATEGIES

    # "random" is the random-mask control, which draws its masks instead of ranking magnitudes
    assert set(choices(sections.PruneConfig, "strategy")) == {*STRATEGIES, "random"} and "random" in CONTROLS


def test_every_measure_choice_has_a_measure():
    from ddpm_lottery.measures.evaluate import MEASURES

    assert set(choices(sections.EvalSettings, "measures")) == set(MEASURES) == set(sections.MEASURE_NAMES)


def test_every_sampler_choice_builds_its_scheduler():
    from ddpm_lottery.models.diffusion import SAMPLERS, sampling_scheduler

    assert choices(sections.SamplingConfig, "sampler") == SAMPLERS
    for sampler in SAMPLERS:
        assert sampling_scheduler(sections.DiffusionConfig(), sampler, 4) is not None


def test_every_tracker_choice_has_a_folder():
    from ddpm_lottery.training.tracking import TRACKER_FOLDERS

    assert set(choices(sections.RuntimeConfig, "log_to")) == {"none", *TRACKER_FOLDERS}


def test_every_kernel_choice_is_one_the_layers_know():
    from ddpm_lottery.kernels.layers import KERNEL_CHOICES

    assert choices(sections.RuntimeConfig, "kernels") == KERNEL_CHOICES


def test_structures_and_scopes():
    from ddpm_lottery.pruning.channels.groups import SCOPES, STRUCTURES

    assert choices(sections.PruneConfig, "structure") == STRUCTURES
    assert choices(sections.PruneConfig, "channel_scope") == SCOPES


def test_every_dataset_choice_is_a_dataset():
    from ddpm_lottery.data.images import DATASETS

    assert choices(sections.DataConfig, "dataset") == DATASETS


def test_the_weight_sets_are_one_literal():
    from ddpm_lottery.runs.records import LevelCosts

    allowed = set(typing.get_args(sections.WeightSet))
    assert typing.get_type_hints(LevelCosts)["weights"] == sections.WeightSet
    assert allowed == {"ema", "raw"}
    for section, name in [
        (sections.SamplingConfig, "weights"),
        (sections.CkaConfig, "weights"),
        (sections.PruneConfig, "magnitudes"),
    ]:
        assert set(choices(section, name)) == allowed, (section.__name__, name)


def test_every_control_is_a_run_kind_and_a_study_can_name_it():
    from ddpm_lottery.lottery.controls import CONTROLS
    from ddpm_lottery.runs.layout import KINDS

    assert {f"control-{name}" for name in CONTROLS} == {k for k in KINDS if k.startswith("control-")}
    assert set(KINDS) - {f"control-{name}" for name in CONTROLS} == {"train", "lottery", "range"}


@pytest.mark.parametrize("name", ["reinit", "random", "refill"])
def test_a_study_accepts_each_control(tmp_path, name):
    from ddpm_lottery.lottery.controls import CONTROLS
    from ddpm_lottery.study.spec import load_study

    assert name in CONTROLS
    study = tmp_path / "study.toml"
    study.write_text(
        '[study]\nname = "s"\ndata_seeds = [0]\n[train]\nsteps = 2\n'
        f'[searches.unified]\nstrategy = "unified"\n[controls]\n{name} = ["unified"]\n'
    )
    assert [run.control for run in load_study(study).runs(tmp_path / "out") if run.control] == [name]
