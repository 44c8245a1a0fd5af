import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from ddpm_lottery.config import (
    FILE_SECTIONS, SECTION_CLASSES, CkaConfig, EvalConfig, LotteryConfig, QuickstartConfig, RunConfig, SampleConfig,
    add_arguments, apply_overrides, check_config, check_unambiguous, config_from_args, config_hash, from_dict,
    hashed_keys, non_default, setting, to_dict,
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


# ----------------------------------------------------------------------------------------------
# Sections resolve exactly: a setting under the wrong [section] is refused, not moved silently


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("cls,name,text,needle", [
    (RunConfig, "c.toml", "[model]\nbatch_size = 8\n",
     "model.batch_size .*batch_size belongs to \\[train\\], not \\[model\\]"),
    (LotteryConfig, "c.toml", "[prune]\nsteps = 5\n", "prune.steps .*steps belongs to \\[train\\], not \\[prune\\]"),
    (LotteryConfig, "c.yaml", "data:\n  lr: 0.1\n", "lr belongs to \\[train\\], not \\[data\\]"),
    (LotteryConfig, "c.yaml", "model.seed_init: 3\n", "seed_init belongs to \\[train\\], not \\[model\\]"),
])
def test_a_setting_under_the_wrong_section_is_refused(tmp_path, cls, name, text, needle):
    with pytest.raises(UserError, match=needle) as info:
        parse([], cls=cls, config_file=write(tmp_path, name, text))
    assert "\n" not in str(info.value)


def test_apply_overrides_resolves_section_and_field_exactly():
    config = apply_overrides(LotteryConfig(), {"train.batch_size": 8, "steps": 5, "prune.prune-ratio": 0.3})
    assert (config.train.batch_size, config.train.steps, config.prune.prune_ratio) == (8, 5, 0.3)
    with pytest.raises(UserError, match="belongs to \\[train\\], not \\[model\\]"):
        apply_overrides(RunConfig(), {"model.batch_size": 8})
    with pytest.raises(UserError, match="reads .*not \\[prune\\]"):
        apply_overrides(RunConfig(), {"prune.strategy": "global"})
    with pytest.raises(UserError, match="nests sections"):
        apply_overrides(RunConfig(), {"train.x.steps": 1})
    # A single-section config answers to its own [section] name as well as to flat keys.
    assert apply_overrides(EvalConfig(), {"eval.num_samples": 100}).num_samples == 100


@pytest.mark.parametrize("cls", [RunConfig, LotteryConfig, EvalConfig, SampleConfig, CkaConfig])
def test_an_unknown_section_is_an_error(tmp_path, cls):
    path = write(tmp_path, "c.toml", "[trian]\nsteps = 5\n")
    with pytest.raises(UserError, match="unknown section \\[trian\\].*did you mean \\[train\\]"):
        parse([], cls=cls, config_file=path)


def test_sections_of_other_commands_are_skipped(tmp_path):
    """One recipe serves every command: each reads its own sections and skips the others'."""
    path = write(tmp_path, "recipe.toml", '[train]\nsteps = 7\n[prune]\nmax_rounds = 3\n[eval]\nnum_samples = 100\n'
                 '[sample]\nnum_samples = 9\n[cka]\nweights = "ema"\nbatch = 8\n[quickstart]\nrounds = 4\n')
    ticket = parse([], cls=LotteryConfig, config_file=path)
    assert (ticket.train.steps, ticket.prune.max_rounds) == (7, 3)
    training = parse([], cls=RunConfig, config_file=path)
    assert training.train.steps == 7
    evaluation = parse([], cls=EvalConfig, config_file=path)
    # [cka] weights used to land on EvalConfig.weights because only the field name was looked at.
    assert (evaluation.num_samples, evaluation.weights) == (100, "ema") and evaluation == EvalConfig(num_samples=100)
    assert parse([], cls=SampleConfig, config_file=path).num_samples == 9
    assert parse([], cls=CkaConfig, config_file=path) == CkaConfig(weights="ema", batch=8)
    assert parse([], cls=QuickstartConfig, config_file=path).rounds == 4


def test_a_setting_of_another_command_is_named_in_the_error(tmp_path):
    path = write(tmp_path, "c.toml", "[train]\nnum_samples = 100\n")
    with pytest.raises(UserError, match="num_samples belongs to \\[eval\\]"):
        parse([], cls=LotteryConfig, config_file=path)


def test_composite_configs_are_unambiguous():
    for cls in (RunConfig, LotteryConfig, SampleConfig, EvalConfig, CkaConfig, QuickstartConfig):
        check_unambiguous(cls)


@dataclass
class _First:
    size: int = setting(1, "first size")


@dataclass
class _Second:
    size: int = setting(2, "second size")


@dataclass
class _Ambiguous:
    first: _First = field(default_factory=_First)
    second: _Second = field(default_factory=_Second)


@dataclass
class _AliasClash:
    steps: int = setting(1, "steps")
    count: int = setting(2, "count", aliases=("--steps",))


def test_an_ambiguous_composite_is_detected():
    with pytest.raises(TypeError, match="first.size.*'size'|second.size.*'size'"):
        check_unambiguous(_Ambiguous)
    with pytest.raises(TypeError, match="--steps"):
        check_unambiguous(_AliasClash)


# ----------------------------------------------------------------------------------------------
# Nonsense values are refused while the config is built


@pytest.mark.parametrize("name,text,flag", [
    ("c.yaml", "steps: true\n", "--steps"),
    ("c.yaml", "train:\n  lr: false\n", "--lr"),
    ("c.toml", "[train]\nbatch_size = true\n", "--batch-size"),
    ("c.yaml", "model:\n  block_out_channels: [8, true]\n", "--block-out-channels"),
    ("c.yaml", "steps: 2.5\n", "--steps"),
    ("c.toml", "[train]\nwarmup_steps = 1.5\n", "--warmup-steps"),
])
def test_booleans_and_fractions_are_no_counts(tmp_path, name, text, flag):
    with pytest.raises(UserError, match=f"^{flag} expects") as info:
        parse([], config_file=write(tmp_path, name, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv,cls", [
    (["--ratio-increment", "nan"], LotteryConfig),
    (["--grad-clip", "nan"], RunConfig),
    (["--beta-end", "nan"], RunConfig),
    (["--lr", "inf"], RunConfig),
    (["--lr", "nan"], RunConfig),
    (["--weight-decay", "-inf"], RunConfig),
    (["--eta", "nan"], SampleConfig),
    (["--threshold", "inf"], CkaConfig),
    (["--dropout", "nan"], RunConfig),
])
def test_non_finite_numbers_are_refused(argv, cls):
    flag, value = argv
    with pytest.raises(UserError, match=f"^{flag} must be .*finite number.*got {value}"):
        parse([f"{flag}={value}"], cls=cls)


def test_non_finite_numbers_in_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="^--grad-clip must be a finite number ≥ 0, got nan \\(train.grad_clip in "):
        parse([], config_file=write(tmp_path, "c.toml", "[train]\ngrad_clip = nan\n"))
    with pytest.raises(UserError, match="^--lr .*got inf"):
        parse([], config_file=write(tmp_path, "c.yaml", "lr: .inf\n"))


@pytest.mark.parametrize("flag,value,cls", [
    ("--image-size", "0", RunConfig), ("--channels", "2", RunConfig), ("--steps", "0", RunConfig),
    ("--batch-size", "0", RunConfig), ("--lr", "0", RunConfig), ("--lr", "-1e-3", RunConfig),
    ("--warmup-steps", "-1", RunConfig), ("--grad-clip", "-1", RunConfig), ("--weight-decay", "-0.1", RunConfig),
    ("--ema-decay", "1", RunConfig), ("--ema-decay", "-0.5", RunConfig), ("--checkpoint-every", "0", RunConfig),
    ("--keep-checkpoints", "0", RunConfig), ("--log-every", "0", RunConfig), ("--num-train-timesteps", "1", RunConfig),
    ("--beta-start", "0", RunConfig), ("--beta-end", "1", RunConfig), ("--block-out-channels", "8,0,8", RunConfig),
    ("--prune-ratio", "0", LotteryConfig), ("--prune-ratio", "1", LotteryConfig),
    ("--target-sparsity", "1", LotteryConfig), ("--target-sparsity", "0", LotteryConfig),
    ("--ratio-increment", "-0.01", LotteryConfig), ("--rewind-fraction", "1", LotteryConfig),
    ("--rewind-fraction", "-0.1", LotteryConfig), ("--max-round-ratio", "0", LotteryConfig),
    ("--max-round-ratio", "1.5", LotteryConfig), ("--min-module-density", "1", LotteryConfig),
    ("--max-rounds", "0", LotteryConfig), ("--level-samples", "0", LotteryConfig),
    ("--num-samples", "0", SampleConfig), ("--sampling-steps", "0", SampleConfig), ("--eta", "-1", SampleConfig),
    ("--num-samples", "1", EvalConfig), ("--sampling-steps", "0", EvalConfig), ("--kid-subset-size", "1", EvalConfig),
    ("--kid-subsets", "0", EvalConfig), ("--reference-samples", "1", EvalConfig),
    ("--batch", "2", CkaConfig), ("--threshold", "0", CkaConfig), ("--timesteps", "-1,5", CkaConfig),
    ("--steps-per-level", "0", QuickstartConfig), ("--batch-size", "0", QuickstartConfig),
    ("--prune-ratio", "0", QuickstartConfig), ("--rounds", "0", QuickstartConfig),
    ("--num-samples", "1", QuickstartConfig), ("--sampling-steps", "0", QuickstartConfig),
])
def test_out_of_range_values_are_refused(flag, value, cls):
    with pytest.raises(UserError, match=f"^{flag} ") as info:
        parse([f"{flag}={value}"], cls=cls)  # "=": argparse takes "-1e-3" for a flag otherwise
    assert "\n" not in str(info.value)


def test_values_on_inclusive_bounds_are_accepted():
    config = parse(["--grad-clip", "0", "--warmup-steps", "0", "--weight-decay", "0", "--ema-decay", "0",
                    "--num-train-timesteps", "2", "--rewind-fraction", "0", "--max-round-ratio", "1",
                    "--min-module-density", "0", "--ratio-increment", "0", "--image-size", "1", "--channels", "3"],
                   cls=LotteryConfig)
    assert config.train.grad_clip == 0 and config.prune.max_round_ratio == 1 and config.data.channels == 3
    assert parse(["--eta", "0", "--num-samples", "1"], cls=SampleConfig).num_samples == 1
    assert parse(["--batch", "3", "--level=-1"], cls=CkaConfig).batch == 3


def test_range_errors_name_the_flag_and_the_range():
    with pytest.raises(UserError) as info:
        parse(["--grad-clip", "nan"])
    assert str(info.value).startswith("--grad-clip must be a finite number ≥ 0, got nan; ")
    with pytest.raises(UserError, match="--steps must be positive \\(an integer ≥ 1\\), got 0"):
        parse(["--steps", "0"])
    with pytest.raises(UserError, match="--prune-ratio must be a finite number in \\(0, 1\\), got 1.0"):
        parse(["--prune-ratio", "1"], cls=LotteryConfig)


def test_beta_start_must_stay_below_beta_end(tmp_path):
    with pytest.raises(UserError, match="--beta-start \\(0.03\\) must be below --beta-end \\(0.02\\)"):
        parse(["--beta-start", "0.03"])
    with pytest.raises(UserError, match="below --beta-end"):
        parse(["--beta-start", "0.01", "--beta-end", "0.01"])
    # The cross-field rule waits for the flags: the file and the flags may each move one end.
    path = write(tmp_path, "c.toml", "[diffusion]\nbeta_end = 0.00005\n")
    config = parse(["--beta-start", "0.00001"], config_file=path)
    assert (config.diffusion.beta_start, config.diffusion.beta_end) == (1e-5, 5e-5)


def test_quickstart_kid_subset_fits_the_samples():
    with pytest.raises(UserError, match="--kid-subset-size \\(200\\) exceeds"):
        parse(["--kid-subset-size", "200"], cls=QuickstartConfig)


def test_stored_configs_are_checked_when_read_back():
    good = to_dict(LotteryConfig())
    assert from_dict(LotteryConfig, good) == LotteryConfig()
    for section, key, value, needle in [
        ("train", "grad_clip", float("nan"), "--grad-clip must be a finite number"),
        ("train", "steps", True, "--steps expects an integer"),
        ("data", "image_size", 0, "--image-size must be positive"),
        ("prune", "prune_ratio", 1.5, "--prune-ratio must be"),
        ("diffusion", "beta_start", 0.5, "below --beta-end"),
    ]:
        stored = to_dict(LotteryConfig())
        stored[section][key] = value
        with pytest.raises(UserError, match=needle):
            from_dict(LotteryConfig, stored)
    stored = to_dict(RunConfig())
    stored["model"]["batch_size"] = 8
    with pytest.raises(UserError, match="belongs to \\[train\\]"):
        from_dict(RunConfig, stored)
    with pytest.raises(UserError, match="run/config.json"):
        from_dict(RunConfig, {"train": {"steps": 0}}, source="run/config.json")


def test_check_config_accepts_every_default_and_catches_code_built_values():
    for cls in (RunConfig, LotteryConfig, SampleConfig, EvalConfig, CkaConfig, QuickstartConfig):
        assert check_config(cls()) == cls()
    config = RunConfig()
    config.train.lr = float("inf")
    with pytest.raises(UserError, match="^--lr must be positive"):
        check_config(config)
    config = RunConfig()
    config.train.steps = 2.5
    with pytest.raises(UserError, match="^--steps must be"):
        check_config(config)


def test_setting_takes_one_bound_per_side():
    with pytest.raises(TypeError):
        setting(1.0, "x", minimum=0, above=0)
    with pytest.raises(TypeError):
        setting(1.0, "x", maximum=1, below=1)


def test_help_shows_the_accepted_range():
    parser = argparse.ArgumentParser()
    add_arguments(parser, LotteryConfig())
    text = " ".join(parser.format_help().split())
    assert "[default: 0.2; a finite number in (0, 1)]" in text
    assert "[default: 3000; an integer ≥ 1]" in text and "[default: ; each an integer ≥ 1]" in text


def test_new_fields_keep_existing_hashes():
    """These digests were computed before the bounds and sparsity_schedule were added."""
    assert config_hash(RunConfig()) == config_hash(LotteryConfig()) == "44136fa355b3"
    config = LotteryConfig()
    config.train.lr, config.prune.prune_ratio = 2e-4, 0.5
    config.model.block_out_channels, config.data.image_size = (8, 8, 8), 32
    assert config_hash(config) == "3aa0a29600f4"


def test_hashed_keys_list_every_result_affecting_setting():
    keys = hashed_keys(LotteryConfig())
    assert "train.lr" in keys and "prune.prune_ratio" in keys and "data.dataset" in keys
    assert "train.device" not in keys and "train.checkpoint_every" not in keys and "prune.sparsity_schedule" not in keys
    assert hashed_keys(EvalConfig())[0] == "num_samples"


def test_help_texts_cite_only_this_project():
    """Help is read where the documents behind it are not: no references to an outside guide."""
    for cls in SECTION_CLASSES.values():
        for f in dataclasses.fields(cls):
            assert "GUIDE" not in f.metadata["help"] and "§" not in f.metadata["help"], f.name


def test_file_sections_cover_every_section_class():
    assert set(FILE_SECTIONS) == set(SECTION_CLASSES)
    for name in ("data", "model", "diffusion", "train", "prune", "eval", "sample", "cka", "quickstart"):
        assert name in FILE_SECTIONS
