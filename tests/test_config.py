import argparse

import pytest

from ddpm_lottery.config import (
    RunConfig, SampleConfig, add_arguments, config_from_args, config_hash, from_dict,
    non_default, to_dict,
)
from ddpm_lottery.errors import UserError


def parse(argv, cls=RunConfig, config_file=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls())
    return config_from_args(cls, parser.parse_args(argv), config_file)


def test_flags_are_derived_from_every_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser, RunConfig())
    text = parser.format_help()
    for flag in ("--batch-size", "--lr", "--seed-init", "--seed-data", "--preset", "--block-out-channels",
                 "--dataset", "--beta-end", "--ema-decay", "--device", "--flip"):
        assert flag in text


def test_cli_types_and_tuples():
    config = parse(["--steps", "7", "--lr", "3e-4", "--block-out-channels", "8,16", "--flip", "--preset", "small"])
    assert config.train.steps == 7 and config.train.lr == 3e-4
    assert config.model.block_out_channels == (8, 16)
    assert config.data.flip is True and config.model.preset == "small"


def test_precedence_defaults_file_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nsteps = 11\nbatch_size = 8\n[model]\npreset = "small"\n')
    config = parse(["--steps", "5"], config_file=str(toml))
    assert (config.train.steps, config.train.batch_size, config.model.preset) == (5, 8, "small")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("steps: 12\ndata:\n  dataset: mnist\n")
    config = parse([], config_file=str(yaml_file))
    assert config.train.steps == 12 and config.data.dataset == "mnist"


@pytest.mark.parametrize("content,suffix", [("steps = [", ".toml"), ("bogus_key = 1", ".toml"),
                                            ("steps = 'x'", ".toml"), ("a: b", ".json")])
def test_bad_config_files_are_one_line_errors(tmp_path, content, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        parse([], config_file=str(path))
    assert "\n" not in str(info.value)


def test_missing_config_file():
    with pytest.raises(UserError, match="does not exist"):
        parse([], config_file="/nonexistent/c.toml")


def test_choices_are_checked():
    with pytest.raises(UserError, match="not one of"):
        parse(["--sampler", "euler"], cls=SampleConfig)


def test_hash_ignores_defaults_and_unhashed_fields():
    base = RunConfig()
    assert non_default(base) == {}
    other = RunConfig()
    other.train.device = "cpu"
    other.train.checkpoint_every = 7
    other.data.data_dir = "/somewhere/else"
    assert config_hash(other) == config_hash(base)
    other.train.lr = 5e-4
    assert config_hash(other) != config_hash(base)
    assert non_default(other) == {"train.lr": 5e-4}


def test_round_trip_through_dict():
    config = parse(["--steps", "9", "--block-out-channels", "8,16,16", "--dataset", "cifar10"])
    again = from_dict(RunConfig, to_dict(config))
    assert again == config and config_hash(again) == config_hash(config)
