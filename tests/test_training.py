"""The training loop: exact resume, rewinding hooks, divergence, data order."""

import json
import math

import pytest
import torch
from helpers import tiny_run_config

from ddpm_lottery.data.images import ImageSet
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.trainer import DataOrder, StepHooks, Trainer, TrainingDiverged, learning_rate
from ddpm_lottery.utils.errors import UserError


def synthetic_images(count=40, size=28, channels=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    return ImageSet(images=images, labels=None, name="synthetic", source="test", flip=False)


def at(path):
    """Level 0 of a scratch run folder: where a Trainer keeps its log and checkpoints."""
    return Run(path, {}).level(0)


def tiny_config(steps=6, **train):
    return tiny_run_config(steps, **{"checkpoint_every": 3, "log_every": 1, "warmup_steps": 2, **train})


class CrashAt(StepHooks):
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, step):
        if step + 1 == self.step:
            raise KeyboardInterrupt("simulated kill")


def read_losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    images = synthetic_images()
    config = tiny_config(steps=6)
    full = Trainer(config, at(tmp_path / "full"), images=images, progress=False)
    full.run()

    killed = Trainer(config, at(tmp_path / "killed"), images=images, progress=False, hooks=CrashAt(5))
    with pytest.raises(KeyboardInterrupt):
        killed.run()  # dies after step 5; the last checkpoint is at step 3
    resumed = Trainer(config, at(tmp_path / "killed"), images=images, progress=False)
    assert resumed.resume() and resumed.step == 3
    resumed.run()

    for name in full.names:
        assert torch.equal(
            dict(zip(full.names, full.parameters))[name], dict(zip(resumed.names, resumed.parameters))[name]
        ), name
    for a, b in zip(full.ema.shadow_params, resumed.ema.shadow_params):
        assert torch.equal(a, b)
    # the log lines written after the checkpoint by the killed process were dropped, then redone
    assert read_losses(at(tmp_path / "full").log_path) == read_losses(at(tmp_path / "killed").log_path)
    assert len(read_losses(at(tmp_path / "full").log_path)) == 6


def test_checkpoints_are_safetensors_plus_json_and_pruned(tmp_path):
    trainer = Trainer(tiny_config(steps=9), at(tmp_path), images=synthetic_images(), progress=False)
    trainer.run()
    files = sorted(p.name for p in at(tmp_path).checkpoints.folder.iterdir())
    assert files == [
        "latest.json",
        "step_00000006.json",
        "step_00000006.safetensors",
        "step_00000009.json",
        "step_00000009.safetensors",
    ]
    from safetensors.torch import load_file

    tensors = load_file(str(at(tmp_path).checkpoints.folder / "step_00000009.safetensors"))
    assert any(k.startswith("adam.") and k.endswith("exp_avg_sq") for k in tensors)
    assert any(k.startswith("ema.") for k in tensors)
    state = json.loads((at(tmp_path).checkpoints.folder / "step_00000009.json").read_text())
    assert state["step"] == 9 and state["data_position"] == {"epoch": 0, "offset": 36}  # 9 steps x batch 4


def test_same_seeds_same_run_different_data_seed_differs(tmp_path):
    images = synthetic_images()
    a = Trainer(tiny_config(steps=3), at(tmp_path / "a"), images=images, progress=False)
    b = Trainer(tiny_config(steps=3), at(tmp_path / "b"), images=images, progress=False)
    c = Trainer(tiny_config(steps=3, seed_data=1), at(tmp_path / "c"), images=images, progress=False)
    for t in (a, b, c):
        t.run()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters, b.parameters))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters, c.parameters))
    # the initialisation seed alone decides the starting weights
    d = Trainer(tiny_config(steps=3, seed_data=1), at(tmp_path / "d"), images=images, progress=False)
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            d.parameters, Trainer(tiny_config(steps=3), at(tmp_path / "e"), images=images, progress=False).parameters
        )
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(steps=6, lr=1e30, grad_clip=0.0, checkpoint_every=1)
    trainer = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    with pytest.raises(TrainingDiverged) as info:
        trainer.run()
    assert "\n" not in str(info.value) and "last good checkpoint" in str(info.value)
    latest = json.loads((at(tmp_path).checkpoints.folder / "latest.json").read_text())
    from safetensors.torch import load_file

    tensors = load_file(str(at(tmp_path).checkpoints.folder / f"{latest['checkpoint']}.safetensors"))
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_data_order_covers_each_epoch_once():
    order = DataOrder(10, 4, seed=0)
    stream = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert torch.equal(DataOrder(10, 4, seed=0).indices(3), order.indices(3))  # position = step


def test_warmup_schedule():
    config = tiny_config().train
    config.lr, config.warmup_steps = 1.0, 4
    assert [learning_rate(config, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_hooks_see_gradients_and_can_zero_them(tmp_path):
    class FreezeFirst(StepHooks):
        def after_backward(self, parameters):
            parameters[0].grad.zero_()

    trainer = Trainer(
        tiny_config(steps=3), at(tmp_path), images=synthetic_images(), progress=False, hooks=FreezeFirst()
    )
    before = trainer.parameters[0].detach().clone()
    trainer.run()
    assert torch.equal(before, trainer.parameters[0])
    assert not torch.equal(
        trainer.parameters[1],
        Trainer(tiny_config(), at(tmp_path / "x"), images=synthetic_images(), progress=False).parameters[1],
    )


@pytest.mark.parametrize(
    "override,match",
    [
        ({"steps": 0}, "--steps"),
        ({"batch_size": -1}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"ema_decay": 1.0}, "--ema-decay"),
    ],
)
def test_impossible_settings(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        Trainer(tiny_config(**override), at(tmp_path), images=synthetic_images(), progress=False)


def test_image_size_mismatch_is_refused(tmp_path):
    config = tiny_config()
    config.model.sample_size = 28
    with pytest.raises(UserError, match="images are 32x32"):
        Trainer(config, at(tmp_path), images=synthetic_images(size=32), progress=False)
    # without an explicit --sample-size the network follows the data
    assert (
        Trainer(tiny_config(), at(tmp_path), images=synthetic_images(size=32), progress=False).model.config.sample_size
        == 32
    )


def test_loss_decreases_on_a_learnable_set(tmp_path):
    images = torch.zeros(32, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 10:18, 10:18] = 255
    config = tiny_config(steps=40, lr=3e-3, checkpoint_every=40)
    config.train.log_every = 10
    trainer = Trainer(config, at(tmp_path), images=ImageSet(images, None, "squares", "test", False), progress=False)
    summary = trainer.run()
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] < 0.5 * summary["loss_first"]


def test_summary_after_a_kill_between_the_last_checkpoint_and_the_finish(tmp_path):
    """The final checkpoint exists, the process died before the level was stored: the rerun has no step
    left to train and still reports the losses, read from the level's log."""
    config = tiny_config(steps=6)
    first = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    expected = first.run()
    again = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    assert again.resume() and again.step == 6
    summary = again.run()
    assert summary["trained_steps"] == 0 and summary["final_loss"] == expected["final_loss"]


def test_hooks_run_before_the_checkpoint_of_their_step(tmp_path):
    """What a hook writes at step s (theta_tau) exists whenever the checkpoint of step s does."""
    seen = []

    class Record(StepHooks):
        def after_step(self, trainer, step):
            seen.append(
                (
                    trainer.step,
                    trainer.checkpoints.exists()
                    and any(trainer.checkpoints.folder.glob(f"step_{trainer.step:08d}.json")),
                )
            )

    Trainer(tiny_config(steps=3), at(tmp_path), images=synthetic_images(), progress=False, hooks=Record()).run()
    assert seen == [(1, False), (2, False), (3, False)]


def test_a_level_restarted_without_checkpoint_does_not_log_steps_twice(tmp_path):
    """A log left behind by a killed process whose checkpoints are gone (e.g. not kept) is rewritten."""
    config = tiny_config(steps=6)
    first = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    first.run()
    first.checkpoints.remove_all()
    again = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    assert not again.resume()
    again.run()
    assert [r["step"] for r in again.level.training_log()] == [1, 2, 3, 4, 5, 6]


def test_bf16_mixed_precision_trains_through_accelerate_and_is_recorded(tmp_path):
    config = tiny_config(steps=4, mixed_precision="bf16")
    trainer = Trainer(config, at(tmp_path), images=synthetic_images(), progress=False)
    seen = []
    # the forward pass runs under Accelerate's autocast: the network's convolutions compute in bf16
    hook = trainer.model.conv_in.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer.run()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.parameters)  # weights, Adam and EMA stay float32
    assert math.isfinite(trainer.log_summary()["final_loss"])
    assert trainer.processes.accelerator.mixed_precision == "bf16"


def test_fp16_without_cuda_and_batches_that_do_not_split_are_refused(tmp_path):
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        Trainer(tiny_config(mixed_precision="fp16"), at(tmp_path), images=synthetic_images(), progress=False)
    with pytest.raises(UserError, match="does not split into 1 process"):
        Trainer(tiny_config(grad_accumulation=3), at(tmp_path), images=synthetic_images(), progress=False)


def test_compile_wraps_the_training_forward_only(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):  # the real compiler needs minutes on a CPU: check the wiring, not inductor
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(tiny_config(steps=2, compile=True), at(tmp_path), images=synthetic_images(), progress=False)
    assert compiled == [trainer.model]
    trainer.run()


def labelled_images(count=40, classes=4):
    images = synthetic_images(count)
    images.labels = torch.arange(count) % classes
    return images


def conditional_config(steps=6, **train):
    config = tiny_config(steps, **train)
    config.model.class_conditional = True
    config.model.block_out_channels = (16, 16, 16)  # see test_conditioning: 8 groups of one channel erase labels
    return config


def test_conditional_batches_carry_the_labels_with_seeded_dropout(tmp_path):
    images = labelled_images()
    conditional = Trainer(
        conditional_config(label_dropout=0.5, batch_size=40), at(tmp_path / "c"), images=images, progress=False
    )
    plain = Trainer(tiny_config(batch_size=40), at(tmp_path / "u"), images=images, progress=False)
    assert conditional.config.model.num_classes == 4  # taken from the data
    for step in (0, 7):
        clean, noise, timesteps, labels = conditional.batch(step)
        again = conditional.batch(step)[3]
        assert torch.equal(labels, again)  # the step's own generator: the same drops every time
        dropped = labels == 4
        assert 0 < int(dropped.sum()) < len(labels)
        indices = conditional.order.indices(step)
        assert torch.equal(labels[~dropped], images.labels[indices][~dropped])
        # the draws before the labels stay an unconditional run's
        reference = plain.batch(step)
        assert reference[3] is None
        for a, b in zip((clean, noise, timesteps), reference[:3]):
            assert torch.equal(a, b)
    assert not torch.equal(conditional.batch(0)[3], conditional.batch(1)[3])


def test_conditional_resume_with_label_dropout_reproduces_the_uninterrupted_run(tmp_path):
    images = labelled_images()
    config = conditional_config(steps=6, label_dropout=0.3)
    full = Trainer(config, at(tmp_path / "full"), images=images, progress=False)
    full.run()
    killed = Trainer(config, at(tmp_path / "killed"), images=images, progress=False, hooks=CrashAt(5))
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    resumed = Trainer(config, at(tmp_path / "killed"), images=images, progress=False)
    assert resumed.resume() and resumed.step == 3
    resumed.run()
    for a, b in zip(full.parameters, resumed.parameters):
        assert torch.equal(a, b)
    assert read_losses(at(tmp_path / "full").log_path) == read_losses(at(tmp_path / "killed").log_path)
    # the dropout rate changes what is learnt: another rate, other weights
    other = Trainer(
        conditional_config(steps=6, label_dropout=0.0), at(tmp_path / "other"), images=images, progress=False
    )
    other.run()
    assert any(not torch.equal(a, b) for a, b in zip(full.parameters, other.parameters))


def test_label_dropout_on_an_unconditional_run_is_refused():
    from ddpm_lottery.config import check_config

    with pytest.raises(UserError, match="--label-dropout drops class labels, and this run has none"):
        check_config(tiny_config(label_dropout=0.2))
