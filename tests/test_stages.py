"""Stage schedules: parsing, one denoiser per timestep range, every sampler, evaluation and accounting."""

import json
from pathlib import Path

import pytest
import torch

from ddpm_lottery.lottery.networks import level_masks, level_network
from ddpm_lottery.lottery.stages import StagedDenoiser, StagedLevel, calls_per_stage, parse_schedule
from ddpm_lottery.utils.errors import UserError


def test_a_schedule_covers_the_reverse_process_once():
    stages = parse_schedule("600:0=level_04, 1000:600=level_00")
    assert [(s.high, s.low, s.level) for s in stages] == [(1000, 600, "level_00"), (600, 0, "level_04")]
    assert stages[0].covers(999) and stages[0].covers(600) and not stages[0].covers(599)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1000:600=level_00,500:0=level_04", "gap: no level covers timesteps 500..599"),
        ("1000:500=level_00,600:0=level_04", "overlap on timesteps 500..599"),
        ("900:600=level_00,600:0=level_04", "first range must be 1000"),
        ("1000:600=level_00,600:100=level_04", "must reach 0"),
        ("1000-600=level_00", "is not HIGH:LOW=LEVEL"),
        ("600:1000=level_00", "runs upwards: write the higher timestep first"),
        ("1000:600=level_00,600:600=level_02,600:0=level_04", "is empty: it starts and ends at timestep 600"),
        ("", "is empty"),
    ],
)
def test_bad_schedules_name_the_range(text, message):
    with pytest.raises(UserError, match=message):
        parse_schedule(text)


class _Constant(torch.nn.Module):
    """A stand-in denoiser answering with its own constant, so the dispatch is visible."""

    from ddpm_lottery.models.families import UNET as family  # called as a U-Net is

    def __init__(self, value, config):
        super().__init__()
        self.value, self.config = value, config
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device, as every network has

    def forward(self, sample, timestep):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=torch.full_like(sample, self.value))


def test_each_timestep_goes_to_its_range_even_in_a_mixed_batch(tiny_ticket_run):
    from ddpm_lottery.runs.run import Run

    config = level_network(Run.open(tiny_ticket_run).level(0)).config
    staged = StagedDenoiser(parse_schedule("1000:600=a,600:0=b"), [_Constant(1.0, config), _Constant(2.0, config)])
    x = torch.zeros(4, 1, 28, 28)
    out = staged(x, torch.tensor([999, 600, 599, 0])).sample
    assert out[:, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert staged(x, 700).sample.unique().tolist() == [1.0]
    rows = staged.accounting()
    assert [row["calls"] for row in rows] == [2, 1]  # the mixed batch split in two, then one whole call
    assert [row["images"] for row in rows] == [2 + 4, 2]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_a_schedule_of_one_level_samples_exactly_that_level(tiny_ticket_run, sampler):
    from ddpm_lottery.models.diffusion import sample, sampling_scheduler
    from ddpm_lottery.runs.run import Run

    run = Run.open(tiny_ticket_run)
    staged = StagedLevel(run, "1000:400=level_02,400:0=level_02").network()
    alone = level_network(run.level(2))
    kwargs = dict(sampler=sampler, num_steps=10, num_samples=3, seed=5)
    assert torch.equal(sample(staged, run.config.diffusion, **kwargs), sample(alone, run.config.diffusion, **kwargs))
    timesteps = sampling_scheduler(run.config.diffusion, sampler, 10).timesteps.tolist()
    assert [row["calls"] for row in staged.accounting()] == calls_per_stage(staged.stages, timesteps)


def test_switching_networks_changes_the_late_steps_only(tiny_ticket_run):
    from ddpm_lottery.models.diffusion import sample
    from ddpm_lottery.runs.run import Run

    run = Run.open(tiny_ticket_run)
    captured = {}
    for name, schedule in (("dense", "1000:0=level_00"), ("switched", "1000:500=level_00,500:0=level_02")):
        steps = []
        sample(
            StagedLevel(run, schedule).network(),
            run.config.diffusion,
            sampler="ddim",
            num_steps=10,
            num_samples=2,
            seed=1,
            on_intermediate=lambda t, x, steps=steps: steps.append((t, x.clone())),
        )
        captured[name] = steps
    for (t, a), (_, b) in zip(captured["dense"], captured["switched"]):
        assert torch.equal(a, b) == (t >= 500), t  # identical while level 0 denoises, different after


def test_ddim_20_calls_per_range():
    from ddpm_lottery.config import DiffusionConfig
    from ddpm_lottery.models.diffusion import sampling_scheduler

    timesteps = sampling_scheduler(DiffusionConfig(), "ddim", 20).timesteps.tolist()
    assert calls_per_stage(parse_schedule("1000:600=a,600:0=b"), timesteps) == [8, 12]


def test_a_schedule_that_mixes_networks_is_refused_naming_the_difference(tiny_ticket_run, tmp_path):
    import shutil

    from ddpm_lottery import api
    from ddpm_lottery.config import SampleConfig

    other = Path(shutil.copytree(tiny_ticket_run, tmp_path / "other"))
    network = json.loads((other / "network.json").read_text())
    network["layers_per_block"] += 1  # what a run made with --layers-per-block 2 stores
    (other / "network.json").write_text(json.dumps(network))
    schedule = f"1000:500=level_00,500:0={other}/level_02"
    with pytest.raises(UserError, match=r"another network \(layers_per_block=2 there, 1 here\)"):
        api.sample(tiny_ticket_run, SampleConfig(schedule=schedule), tmp_path / "grid", progress=False, log=print)
    assert not (tmp_path / "grid").exists()


def test_a_schedule_is_sampled_and_measured_like_a_level(tiny_ticket_run, fake_extractor, tmp_path):
    from ddpm_lottery import api
    from ddpm_lottery.api import evaluate
    from ddpm_lottery.config import EvalConfig, SampleConfig

    sample_config = SampleConfig(schedule="1000:500=level_00,500:0=level_02", num_samples=4, sampling_steps=4)
    folder = api.sample(tiny_ticket_run, sample_config, tmp_path / "grid", progress=False, log=lambda *_: None)
    info = json.loads((folder / "info.json").read_text())
    assert info["schedule"] == "1000:500=level_00,500:0=level_02" and info["level"] is None
    assert [row["calls"] for row in info["stages"]] == [2, 2]
    config = EvalConfig(
        schedule="1000:500=level_00,500:0=level_02",
        num_samples=40,
        sampling_steps=4,
        bootstrap_rounds=40,
        reference_samples=40,
        kid_subset_size=20,
    )
    (record,) = evaluate(tiny_ticket_run, config, progress=False, log=lambda *_: None, extractor=fake_extractor)
    assert record["schedule"] == "1000:500=level_00,500:0=level_02"
    assert "schedule 1000:500=level_00,500:0=level_02" in record["label"]
    assert (tiny_ticket_run / "schedules" / "1000-500-L0_500-0-L2" / "eval" / f"{record['key']}.json").exists()
    with pytest.raises(UserError, match="has not finished"):
        api.sample(
            tiny_ticket_run,
            SampleConfig(schedule="1000:500=level_00,500:0=level_09"),
            tmp_path / "x",
            progress=False,
            log=lambda *_: None,
        )
    with pytest.raises(UserError, match="drop --level"):
        api.sample(
            tiny_ticket_run,
            SampleConfig(schedule="1000:0=level_00", level=1),
            tmp_path / "y",
            progress=False,
            log=lambda *_: None,
        )


# ----------------------------------------------------------------------------------------------
# Range fine-tuning


@pytest.mark.parametrize("start", ["trained", "rewound"])
def test_a_level_tuned_on_late_timesteps_keeps_its_mask_and_serves_a_schedule(tiny_ticket_run, tmp_path, start):
    from ddpm_lottery.api import tune_range
    from ddpm_lottery.config import TuneConfig
    from ddpm_lottery.runs.run import Run

    config = TuneConfig(level=2, start=start, timestep_range=(0, 500), steps=4)
    out = tune_range(tiny_ticket_run, config, tmp_path / "tuned", progress=False, log=lambda *_: None)
    tuned, source = Run.open(out), Run.open(tiny_ticket_run)
    assert tuned.kind == "range" and tuned.config.train.timestep_range == (0, 500)
    level = tuned.level(0)
    assert level.metrics()["tuned"] == {
        "source": str(source.root),
        "source_level": 2,
        "start": start,
        "timesteps": [0, 500],
    }
    masks, state = level_masks(level), level.state("raw")
    assert all(torch.equal(masks[n], m) for n, m in level_masks(source.level(2)).items())
    assert all(bool((state[n][~m] == 0).all()) for n, m in masks.items())  # pruned weights stayed exactly zero
    assert not torch.equal(state["conv_in.weight"], source.level(2).state("raw")["conv_in.weight"])
    staged = StagedLevel(source, f"1000:500=level_00,500:0={out}/level_00")
    assert [lv.run.root for lv in staged.levels] == [source.root, tuned.root]


def test_range_training_draws_only_its_timesteps(tmp_path):
    from helpers import tiny_run_config

    from ddpm_lottery.data.images import ImageSet
    from ddpm_lottery.runs.run import Run
    from ddpm_lottery.training.trainer import Trainer

    config = tiny_run_config(steps=2)
    config.train.timestep_range = (100, 140)
    images = ImageSet(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), None, "random", "test", False)
    trainer = Trainer(config, Run(tmp_path, {}).level(0), images=images, progress=False)
    drawn = torch.cat([trainer.batch(step)[2] for step in range(20)])
    assert int(drawn.min()) >= 100 and int(drawn.max()) < 140 and len(drawn.unique()) > 10


def test_bad_range_tuning_is_refused(tiny_ticket_run, tmp_path):
    from ddpm_lottery.api import tune_range
    from ddpm_lottery.config import TuneConfig

    with pytest.raises(UserError, match="give --timestep-range"):
        tune_range(tiny_ticket_run, TuneConfig(level=1), tmp_path / "a", progress=False, log=lambda *_: None)
    with pytest.raises(UserError, match="beyond the 1000 timesteps"):
        tune_range(
            tiny_ticket_run,
            TuneConfig(level=1, timestep_range=(0, 1001)),
            tmp_path / "b",
            progress=False,
            log=lambda *_: None,
        )
    with pytest.raises(UserError, match="LOW < HIGH"):
        TuneConfig(timestep_range=(600, 0)).train.check()
