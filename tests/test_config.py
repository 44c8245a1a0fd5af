import argparse
import copy
import dataclasses
import shlex
from dataclasses import dataclass, field

import pytest

from ddpm_lottery.config import (
    FILE_SECTIONS,
    SECTION_CLASSES,
    CkaConfig,
    EvalConfig,
    FrontierConfig,
    LotteryConfig,
    RunConfig,
    SampleConfig,
    SamplingConfig,
    TuneConfig,
    add_arguments,
    apply_overrides,
    check_config,
    check_unambiguous,
    command_line,
    config_from_args,
    config_hash,
    from_dict,
    hashed_keys,
    non_default,
    setting,
    to_dict,
)
from ddpm_lottery.config.composites import _sections
from ddpm_lottery.utils.errors import UserError


def parse(argv, cls=RunConfig, config_file=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls())
    return config_from_args(cls, parser.parse_args(argv), config_file)


def test_flags_are_derived_from_every_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser, RunConfig())
    text = parser.format_help()
    for flag in (
        "--batch-size",
        "--lr",
        "--seed-init",
        "--seed-data",
        "--preset",
        "--block-out-channels",
        "--dataset",
        "--beta-end",
        "--ema-decay",
        "--device",
        "--flip",
    ):
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


@pytest.mark.parametrize(
    "content,suffix", [("steps = [", ".toml"), ("bogus_key = 1", ".toml"), ("steps = 'x'", ".toml"), ("a: b", ".json")]
)
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
    other.runtime.device = "cpu"
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


@pytest.mark.parametrize(
    "cls,name,text,needle",
    [
        (
            RunConfig,
            "c.toml",
            "[model]\nbatch_size = 8\n",
            "model.batch_size .*batch_size belongs to \\[train\\], not \\[model\\]",
        ),
        (
            LotteryConfig,
            "c.toml",
            "[prune]\nsteps = 5\n",
            "prune.steps .*steps belongs to \\[train\\], not \\[prune\\]",
        ),
        (LotteryConfig, "c.yaml", "data:\n  lr: 0.1\n", "lr belongs to \\[train\\], not \\[data\\]"),
        (LotteryConfig, "c.yaml", "model.seed_init: 3\n", "seed_init belongs to \\[train\\], not \\[model\\]"),
    ],
)
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
    path = write(
        tmp_path,
        "recipe.toml",
        "[train]\nsteps = 7\n[prune]\nmax_rounds = 3\n[eval]\nnum_samples = 100\n"
        'kid_subset_size = 50\n[sample]\nnum_samples = 9\n[cka]\nweights = "ema"\nbatch = 8\n[study]\nname = "s"\n'
        '[searches.u]\nstrategy = "unified"\n[controls]\nreinit = ["u"]\n',
    )
    ticket = parse([], cls=LotteryConfig, config_file=path)
    assert (ticket.train.steps, ticket.prune.max_rounds) == (7, 3)
    training = parse([], cls=RunConfig, config_file=path)
    assert training.train.steps == 7
    evaluation = parse([], cls=EvalConfig, config_file=path)
    # [cka] weights used to land on EvalConfig.weights because only the field name was looked at.
    assert (evaluation.num_samples, evaluation.weights) == (100, "ema") and evaluation == EvalConfig(
        num_samples=100, kid_subset_size=50
    )
    assert parse([], cls=SampleConfig, config_file=path).num_samples == 9
    assert parse([], cls=CkaConfig, config_file=path) == CkaConfig(weights="ema", batch=8)


def test_a_setting_of_another_command_is_named_in_the_error(tmp_path):
    path = write(tmp_path, "c.toml", "[train]\nnum_samples = 100\n")
    with pytest.raises(UserError, match="num_samples belongs to \\[eval\\]"):
        parse([], cls=LotteryConfig, config_file=path)


# Every config that becomes a command's flags.  This was checked at import of the config module;
# as a test, a clash still fails the run at once instead of surfacing as an argparse conflict in one command.
COMMAND_CONFIGS = (RunConfig, LotteryConfig, SampleConfig, EvalConfig, CkaConfig, TuneConfig, FrontierConfig)


@pytest.mark.parametrize("cls", COMMAND_CONFIGS, ids=lambda cls: cls.__name__)
def test_composite_configs_are_unambiguous(cls):
    check_unambiguous(cls)


@pytest.mark.parametrize("cls", COMMAND_CONFIGS, ids=lambda cls: cls.__name__)
def test_composite_sections_are_the_file_sections_of_their_name(cls):
    # A config file names a composite's sections by their field names; SECTION_CLASSES must agree.
    for name, section in _sections(cls()):
        if name:
            assert SECTION_CLASSES.get(name) is type(section), (
                f"{cls.__name__}.{name} holds a {type(section).__name__}, not the class SECTION_CLASSES gives [{name}]"
            )


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


@pytest.mark.parametrize(
    "name,text,flag",
    [
        ("c.yaml", "steps: true\n", "--steps"),
        ("c.yaml", "train:\n  lr: false\n", "--lr"),
        ("c.toml", "[train]\nbatch_size = true\n", "--batch-size"),
        ("c.yaml", "model:\n  block_out_channels: [8, true]\n", "--block-out-channels"),
        ("c.yaml", "steps: 2.5\n", "--steps"),
        ("c.toml", "[train]\nwarmup_steps = 1.5\n", "--warmup-steps"),
    ],
)
def test_booleans_and_fractions_are_no_counts(tmp_path, name, text, flag):
    with pytest.raises(UserError, match=f"^{flag} expects") as info:
        parse([], config_file=write(tmp_path, name, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "argv,cls",
    [
        (["--ratio-increment", "nan"], LotteryConfig),
        (["--grad-clip", "nan"], RunConfig),
        (["--beta-end", "nan"], RunConfig),
        (["--lr", "inf"], RunConfig),
        (["--lr", "nan"], RunConfig),
        (["--weight-decay", "-inf"], RunConfig),
        (["--eta", "nan"], SampleConfig),
        (["--threshold", "inf"], CkaConfig),
        (["--dropout", "nan"], RunConfig),
    ],
)
def test_non_finite_numbers_are_refused(argv, cls):
    flag, value = argv
    with pytest.raises(UserError, match=f"^{flag} must be .*finite number.*got {value}"):
        parse([f"{flag}={value}"], cls=cls)


def test_non_finite_numbers_in_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="^--grad-clip must be a finite number ≥ 0, got nan \\(train.grad_clip in "):
        parse([], config_file=write(tmp_path, "c.toml", "[train]\ngrad_clip = nan\n"))
    with pytest.raises(UserError, match="^--lr .*got inf"):
        parse([], config_file=write(tmp_path, "c.yaml", "lr: .inf\n"))


@pytest.mark.parametrize(
    "flag,value,cls",
    [
        ("--image-size", "0", RunConfig),
        ("--channels", "2", RunConfig),
        ("--steps", "0", RunConfig),
        ("--batch-size", "0", RunConfig),
        ("--lr", "0", RunConfig),
        ("--lr", "-1e-3", RunConfig),
        ("--warmup-steps", "-1", RunConfig),
        ("--grad-clip", "-1", RunConfig),
        ("--weight-decay", "-0.1", RunConfig),
        ("--ema-decay", "1", RunConfig),
        ("--ema-decay", "-0.5", RunConfig),
        ("--checkpoint-every", "0", RunConfig),
        ("--keep-checkpoints", "0", RunConfig),
        ("--log-every", "0", RunConfig),
        ("--num-train-timesteps", "1", RunConfig),
        ("--beta-start", "0", RunConfig),
        ("--beta-end", "1", RunConfig),
        ("--block-out-channels", "8,0,8", RunConfig),
        ("--prune-ratio", "0", LotteryConfig),
        ("--prune-ratio", "1", LotteryConfig),
        ("--target-sparsity", "1", LotteryConfig),
        ("--target-sparsity", "0", LotteryConfig),
        ("--ratio-increment", "-0.01", LotteryConfig),
        ("--rewind-fraction", "1", LotteryConfig),
        ("--rewind-fraction", "-0.1", LotteryConfig),
        ("--max-round-ratio", "0", LotteryConfig),
        ("--max-round-ratio", "1.5", LotteryConfig),
        ("--min-module-density", "1", LotteryConfig),
        ("--max-rounds", "0", LotteryConfig),
        ("--level-samples", "0", LotteryConfig),
        ("--num-samples", "0", SampleConfig),
        ("--sampling-steps", "0", SampleConfig),
        ("--eta", "-1", SampleConfig),
        ("--num-samples", "1", EvalConfig),
        ("--sampling-steps", "0", EvalConfig),
        ("--kid-subset-size", "1", EvalConfig),
        ("--kid-subsets", "0", EvalConfig),
        ("--reference-samples", "1", EvalConfig),
        ("--batch", "2", CkaConfig),
        ("--threshold", "0", CkaConfig),
        ("--timesteps", "-1,5", CkaConfig),
        ("--bootstrap-rounds", "0", EvalConfig),
        ("--confidence", "1", EvalConfig),
        ("--loss-bands", "0", EvalConfig),
        ("--measures", "fid", EvalConfig),
    ],
)
def test_out_of_range_values_are_refused(flag, value, cls):
    with pytest.raises(UserError, match=f"^{flag} ") as info:
        parse([f"{flag}={value}"], cls=cls)  # "=": argparse takes "-1e-3" for a flag otherwise
    assert "\n" not in str(info.value)


def test_values_on_inclusive_bounds_are_accepted():
    config = parse(
        [
            "--grad-clip",
            "0",
            "--warmup-steps",
            "0",
            "--weight-decay",
            "0",
            "--ema-decay",
            "0",
            "--num-train-timesteps",
            "2",
            "--rewind-fraction",
            "0",
            "--max-round-ratio",
            "1",
            "--min-module-density",
            "0",
            "--ratio-increment",
            "0",
            "--image-size",
            "1",
            "--channels",
            "3",
        ],
        cls=LotteryConfig,
    )
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
    for cls in (RunConfig, LotteryConfig, SampleConfig, EvalConfig, CkaConfig):
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
    assert "runtime.device" not in keys and "train.checkpoint_every" not in keys
    assert "prune.sparsity_schedule" not in keys
    keys = hashed_keys(EvalConfig())
    assert "eval.num_samples" in keys and "sampling.sampler" in keys and "sampling.sample_batch_size" not in keys


def test_help_texts_cite_only_this_project():
    """Help is read where the documents behind it are not: no references to an outside guide."""
    for cls in SECTION_CLASSES.values():
        for f in dataclasses.fields(cls):
            assert "GUIDE" not in f.metadata["help"] and "§" not in f.metadata["help"], f.name


def test_file_sections_cover_every_section_class():
    assert set(FILE_SECTIONS) == set(SECTION_CLASSES)
    for name in (
        "data",
        "model",
        "diffusion",
        "train",
        "runtime",
        "prune",
        "sampling",
        "eval",
        "sample",
        "cka",
        "study",
    ):
        assert name in FILE_SECTIONS


# ----------------------------------------------------------------------------------------------
# Shared sections: sampling and the device are declared once and composed into each command


def test_shared_settings_are_declared_once():
    def owners(name):
        return [
            section for section, cls in SECTION_CLASSES.items() if name in {f.name for f in dataclasses.fields(cls)}
        ]

    assert owners("device") == ["runtime"]
    for name in ("sampler", "sampling_steps", "eta", "sample_seed", "weights", "sample_batch_size"):
        # [cka] has its own weights: another setting of the same name.
        assert "sampling" in owners(name) and not {"sample", "eval"} & set(owners(name)), name
    assert SampleConfig().sampling == EvalConfig().sampling == SamplingConfig()
    assert RunConfig().runtime == LotteryConfig().runtime == EvalConfig().runtime


def test_command_configs_read_and_write_flat():
    config = EvalConfig(num_samples=100, sampler="ddpm", device="cpu", cache_dir="/c")
    assert (config.eval.num_samples, config.sampling.sampler, config.runtime.device, config.eval.cache_dir) == (
        100,
        "ddpm",
        "cpu",
        "/c",
    )
    assert (config.num_samples, config.sampler, config.device) == (100, "ddpm", "cpu")
    config.eta = 0.5
    assert config.sampling.eta == 0.5 and config == EvalConfig(
        num_samples=100, sampler="ddpm", device="cpu", cache_dir="/c", eta=0.5
    )
    assert copy.deepcopy(config) == config and dataclasses.replace(config) == config
    assert EvalConfig(sampling=SamplingConfig(sampler="ddpm")).sampler == "ddpm"
    with pytest.raises(TypeError, match="num_sample"):
        EvalConfig(num_sample=5)
    with pytest.raises(AttributeError, match="no setting 'num_sample'"):
        config.num_sample = 5
    with pytest.raises(AttributeError):
        config.level  # noqa: B018 - the sample command's, not evaluate's


def test_a_moved_setting_fails_when_written_to_its_old_section():
    config = RunConfig()
    moved = "^TrainConfig has no setting 'device'; device is declared in \\[runtime\\]$"
    with pytest.raises(AttributeError, match=moved):
        config.train.device = "cpu"
    with pytest.raises(AttributeError, match=moved):
        config.train.device  # noqa: B018 - reading the old place explains the move as well
    with pytest.raises(AttributeError, match="no setting 'stpes'"):
        config.train.stpes = 5


def test_shared_settings_in_a_command_section_and_in_the_shared_one(tmp_path):
    path = write(
        tmp_path,
        "recipe.toml",
        '[sampling]\nsampler = "dpm-solver++"\nsample_seed = 3\n'
        '[runtime]\ndevice = "cuda"\n[eval]\nnum_samples = 50\nsampler = "ddpm"\nsampling_steps = 100\n'
        '[sample]\nnum_samples = 9\nweights = "raw"\n[train]\ndevice = "cpu"\n',
    )
    evaluation = parse([], cls=EvalConfig, config_file=path)
    # [eval] holds evaluate's protocol: it wins over [sampling], and [sample]'s weights stay out of it.
    assert evaluation == EvalConfig(num_samples=50, sampler="ddpm", sampling_steps=100, sample_seed=3, device="cuda")
    sampling = parse([], cls=SampleConfig, config_file=path)
    assert sampling == SampleConfig(num_samples=9, sampler="dpm-solver++", sample_seed=3, weights="raw", device="cuda")
    assert parse([], cls=RunConfig, config_file=path).runtime.device == "cpu"
    assert parse(["--sampler", "ddim"], cls=EvalConfig, config_file=path).sampler == "ddim"  # flags win


def test_a_shared_setting_under_an_unrelated_section_is_refused(tmp_path):
    with pytest.raises(
        UserError, match="device belongs to \\[runtime\\], not \\[model\\]; move it to \\[runtime\\] or \\[train\\]"
    ):
        parse([], cls=LotteryConfig, config_file=write(tmp_path, "c.toml", '[model]\ndevice = "cpu"\n'))
    with pytest.raises(UserError, match="sampler belongs to \\[sampling\\], not \\[runtime\\]"):
        parse([], cls=EvalConfig, config_file=write(tmp_path, "d.toml", '[runtime]\nsampler = "ddpm"\n'))


def test_run_configs_stored_with_the_device_under_train_still_load():
    stored = to_dict(LotteryConfig())
    del stored["runtime"]
    stored["train"]["device"] = "cpu"
    config = from_dict(LotteryConfig, stored)
    assert config.runtime.device == "cpu" and config_hash(config) == config_hash(LotteryConfig())


# ----------------------------------------------------------------------------------------------
# command_line: the flags that rebuild a config


def reparse(cls, command: str, prog_words: int, config_file=None):
    words = shlex.split(command)[prog_words:]
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    add_arguments(parser, cls())
    return config_from_args(cls, parser.parse_args(words), config_file)


def test_command_line_of_a_ticket_search_parses_back_to_it():
    config = LotteryConfig()
    config.model.block_out_channels = (8, 16, 16)  # a tuple
    config.data.flip = False  # a bool off, on an optional setting
    config.prune.one_shot = True  # a bool on
    config.train.lr = 2.5e-05  # a float that needs every digit
    config.prune.prune_ratio = 1 / 3
    config.prune.include = ("*conv*", "up_blocks.*")
    config.data.data_dir = "/data/my digits"  # unhashed, and quoted for the shell
    config.runtime.device = "cpu"
    config.train.seed_init = 4
    config.prune.sparsity_schedule = (0.5, 0.75)
    command = command_line("ddpm-lottery find-ticket", config, ["--out", "runs/a b"])
    assert command.startswith("ddpm-lottery find-ticket --out 'runs/a b' ")
    assert "--block-out-channels 8,16,16" in command and "--no-flip" in command and "--one-shot" in command
    assert "--lr 2.5e-05" in command and "--seed-init 4" in command and "--device cpu" in command
    assert "--steps" not in command and "--data-dir '/data/my digits'" in command  # defaults are left out
    again = reparse(LotteryConfig, command, 2)
    assert again == config and again.prune.prune_ratio == 1 / 3


def test_a_negative_value_is_written_with_an_equals_sign_and_seeds_are_bounded():
    config = RunConfig()
    config.train.seed_init = -4  # "--seed-init=-4": argparse would take "-4" for a flag
    command = command_line("ddpm-lottery train", config)
    assert command == "ddpm-lottery train --seed-init=-4"
    # a negative seed, or one at the step-seed modulus, would alias a seed in [0, 2**63 - 2]
    with pytest.raises(UserError, match=r"--seed-init must be an integer in \[0, 9223372036854775806\], got -4"):
        reparse(RunConfig, command, 2)


def test_seeds_at_the_step_seed_modulus_would_alias_so_the_bound_stops_below_it(tmp_path):
    from ddpm_lottery.cli.main import main
    from ddpm_lottery.config.sections import SEED_BOUNDS, SEED_MODULUS
    from ddpm_lottery.training.trainer import step_seed

    assert step_seed(SEED_MODULUS, 7) == step_seed(0, 7)  # why the bound is there
    top = SEED_BOUNDS["maximum"]
    assert top == SEED_MODULUS - 1 and step_seed(top, 7) != step_seed(0, 7)
    assert main(["train", "--seed-data", str(SEED_MODULUS), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_command_line_of_a_default_config_is_the_bare_command():
    assert command_line("ddpm-lottery train", RunConfig()) == "ddpm-lottery train"
    assert reparse(RunConfig, command_line("ddpm-lottery train", RunConfig()), 2) == RunConfig()


@pytest.mark.parametrize(
    "config",
    [
        EvalConfig(
            num_samples=50000,
            sampler="ddpm",
            sampling_steps=1000,
            eta=0.25,
            sample_seed=7,
            weights="raw",
            reference_split="test",
            kid_subsets=50,
            cache_dir="/tmp/fid cache",
            device="cpu",
            sample_batch_size=128,
        ),
        SampleConfig(num_samples=16, npz=True, level=2, sampler="dpm-solver++", eta=1.5),
        CkaConfig(level=3, timesteps=(), threshold=0.5, weights="ema"),
    ],
    ids=["eval", "sample", "cka"],
)
def test_command_line_round_trips_every_command_config(config):
    command = command_line("ddpm-lottery x", config)
    assert reparse(type(config), command, 2) == config, command
