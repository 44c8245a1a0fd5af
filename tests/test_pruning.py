"""Masks, module map and strategies, on the tiny preset (no training needed)."""

import math

import pytest
import torch

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.pruning.masks import count_kept, count_total, full_masks, load_masks, save_masks, sparsity
from ddpm_lottery.pruning.modules import module_map, prunable_names
from ddpm_lottery.pruning.strategies import (
    STRATEGIES,
    PruneSettings,
    prune_round,
    random_masks,
    random_masks_at,
    simulate_sparsity,
)
from ddpm_lottery.training.trainer import MaskedTraining
from ddpm_lottery.utils.errors import UserError


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(preset="tiny"), 1, seed=0)


@pytest.fixture(scope="module")
def magnitudes(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def fresh(model, mmap):
    return full_masks(model, mmap.tensor_names)


def test_prunable_tensors_are_conv_and_linear_weights_only(model):
    names = prunable_names(model)
    params = dict(model.named_parameters())
    assert all(n.endswith(".weight") and params[n].dim() in (2, 4) for n in names)
    assert "time_embedding.linear_1.weight" in names and "down_blocks.2.attentions.0.to_q.weight" in names
    assert not any("norm" in n for n in names)
    expected = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert sum(params[n].numel() for n in names) == expected


def test_module_map_follows_execution_not_registration(model):
    mmap = module_map(model)
    names = [m.name for m in mmap.modules]
    assert names[0] == "time_embedding" and names[1] == "conv_in" and names[-1] == "conv_out"
    # diffusers registers mid_block after up_blocks, but it runs before them
    assert names.index("mid_block.resnets.0") < names.index("up_blocks.0.resnets.0")
    # inside a down block the ResNet runs before its attention
    assert names.index("down_blocks.2.resnets.0") < names.index("down_blocks.2.attentions.0")
    assert sorted(mmap.tensor_names) == sorted(prunable_names(model))
    layers = module_map(model, "layer")
    assert len(layers.modules) == len(prunable_names(model)) > len(mmap.modules)


def test_include_exclude_patterns(model):
    only_attention = prunable_names(model, include=("*attentions*",))
    assert only_attention and all("attentions" in n for n in only_attention)
    no_time = prunable_names(model, exclude=("time_embedding.*",))
    assert not any(n.startswith("time_embedding") for n in no_time)
    with pytest.raises(UserError, match="matches no prunable weight"):
        prunable_names(model, include=("nothing.here*",))
    with pytest.raises(UserError, match="matches no prunable weight"):
        prunable_names(model, exclude=("nope",))


def test_unified_gives_equal_sparsity_and_global_does_not(model, magnitudes):
    mmap = module_map(model)
    settings = PruneSettings(prune_ratio=0.5)
    masks = fresh(model, mmap)
    for _ in range(2):
        masks, _ = prune_round("unified", mmap, masks, magnitudes, settings)
    per_tensor = [1 - m.sum().item() / m.numel() for m in masks.values()]
    # 75 % in every tensor, to within one weight (rounding per tensor)
    for name, m in masks.items():
        assert abs((m.numel() - m.sum().item()) - 0.75 * m.numel()) <= 1.5, name
    global_masks, _ = prune_round("global", mmap, fresh(model, mmap), magnitudes, PruneSettings(prune_ratio=0.75))
    g = [1 - m.sum().item() / m.numel() for m in global_masks.values()]
    assert max(g) - min(g) > 0.2 and max(per_tensor) - min(per_tensor) < 0.05
    assert abs(sparsity(global_masks) - 0.75) < 1e-5


def test_global_prunes_the_smallest_magnitudes_overall(model, magnitudes):
    mmap = module_map(model)
    masks, _ = prune_round("global", mmap, fresh(model, mmap), magnitudes, PruneSettings(prune_ratio=0.3))
    kept = torch.cat([magnitudes[n].abs().view(-1)[masks[n].view(-1)] for n in masks])
    gone = torch.cat([magnitudes[n].abs().view(-1)[~masks[n].view(-1)] for n in masks])
    # every survivor outranks every pruned weight, except each tensor's protected largest weight
    assert int((kept < gone.max()).sum()) <= len(masks)


def test_varying_follows_the_schedule_per_module(model, magnitudes):
    mmap = module_map(model)
    settings = PruneSettings(prune_ratio=0.2, ratio_increment=0.01)
    masks = fresh(model, mmap)
    for _round in range(3):
        before = {m.name: sum(int(masks[n].sum()) for n in m.tensors) for m in mmap.modules}
        masks_next, applied = prune_round("varying", mmap, masks, magnitudes, settings)
        for j, module in enumerate(mmap.modules):
            after = sum(int(masks_next[n].sum()) for n in module.tensors)
            expected = (0.2 + 0.01 * j) * before[module.name]
            assert abs((before[module.name] - after) - expected) <= 1.0, (module.name, j)
            assert applied[j]["unit"] == module.name
        # nested: a pruned weight never comes back
        assert all(not (masks_next[n] & ~masks[n]).any() for n in masks)
        masks = masks_next


def test_reverse_order_prunes_more_upstream(model, magnitudes):
    mmap = module_map(model)
    forward, _ = prune_round("varying", mmap, fresh(model, mmap), magnitudes, PruneSettings(ratio_increment=0.02))
    reverse, _ = prune_round(
        "varying", mmap, fresh(model, mmap), magnitudes, PruneSettings(ratio_increment=0.02, order="reverse")
    )
    first, last = mmap.modules[1], mmap.modules[-2]

    def module_sparsity(masks, module):
        return 1 - sum(int(masks[n].sum()) for n in module.tensors) / module.size

    assert module_sparsity(forward, first) < module_sparsity(forward, last)
    assert module_sparsity(reverse, first) > module_sparsity(reverse, last)


def test_cap_and_floor_hold_past_100_percent(model, magnitudes):
    mmap = module_map(model, "layer")  # 60 layers: p + j*q reaches 0.2 + 59*0.05 = 3.15
    settings = PruneSettings(prune_ratio=0.2, ratio_increment=0.05, max_round_ratio=0.9, min_module_density=0.01)
    masks = fresh(model, mmap)
    masks, applied = prune_round("varying", mmap, masks, magnitudes, settings)
    assert max(a["ratio_planned"] for a in applied) == pytest.approx(0.9)
    assert all(a["removed"] <= 0.9 * a["survivors_before"] + 0.5 for a in applied)  # within one weight
    for _ in range(30):
        masks, applied = prune_round("varying", mmap, masks, magnitudes, settings)
    for module in mmap.modules:
        kept = sum(int(masks[n].sum()) for n in module.tensors)
        assert kept >= max(len(module.tensors), math.ceil(0.01 * module.size)), module.name
        assert all(masks[n].any() for n in module.tensors)  # no layer collapse


def test_target_is_met_exactly_and_not_overshot(model, magnitudes):
    mmap = module_map(model)
    total = count_total(fresh(model, mmap))
    for strategy in ("unified", "global", "varying"):
        masks = fresh(model, mmap)
        for _ in range(20):
            masks, _ = prune_round(strategy, mmap, masks, magnitudes, PruneSettings(prune_ratio=0.5), 0.9)
            assert sparsity(masks) <= 0.9 + 1.0 / total
        assert abs((total - count_kept(masks)) - 0.9 * total) <= 1, strategy


def test_simulation_matches_real_rounds(model, magnitudes):
    mmap = module_map(model)
    settings = PruneSettings(prune_ratio=0.3, ratio_increment=0.01)
    masks = fresh(model, mmap)
    for _ in range(4):
        masks, _ = prune_round("varying", mmap, masks, magnitudes, settings)
    assert simulate_sparsity("varying", mmap, settings, 4) == pytest.approx(sparsity(masks), abs=2e-3)


def test_random_masks_at_a_density_keep_that_share_of_every_tensor():
    shapes = {"a.weight": torch.Size([8, 4, 3, 3]), "b.weight": torch.Size([5, 7]), "c.weight": torch.Size([3])}
    masks = random_masks_at(shapes, 0.125, seed=1)
    assert {n: m.shape for n, m in masks.items()} == shapes
    assert [int(masks[n].sum()) for n in shapes] == [36, 4, 1]  # round(density * size), at least one
    assert all(torch.equal(masks[n], random_masks_at(shapes, 0.125, seed=1)[n]) for n in shapes)
    assert not torch.equal(masks["a.weight"], random_masks_at(shapes, 0.125, seed=2)["a.weight"])


def test_random_masks_copy_per_tensor_sparsity(model, magnitudes):
    mmap = module_map(model)
    ticket, _ = prune_round("global", mmap, fresh(model, mmap), magnitudes, PruneSettings(prune_ratio=0.8))
    control = random_masks(ticket, seed=3)
    assert all(int(control[n].sum()) == int(ticket[n].sum()) for n in ticket)
    assert any(not torch.equal(control[n], ticket[n]) for n in ticket)
    assert all(torch.equal(control[n], random_masks(ticket, seed=3)[n]) for n in ticket)


def test_masks_round_trip_bit_packed(tmp_path, model, magnitudes):
    mmap = module_map(model)
    masks, _ = prune_round("unified", mmap, fresh(model, mmap), magnitudes, PruneSettings(prune_ratio=0.6))
    save_masks(tmp_path / "m.safetensors", masks)
    loaded = load_masks(tmp_path / "m.safetensors", mmap.shapes)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    # one bit per weight (plus the header)
    assert (tmp_path / "m.safetensors").stat().st_size < count_total(masks) / 8 + 20_000


def test_mask_of_another_network_is_refused(tmp_path, model):
    other = build_model(ModelConfig(preset="tiny", block_out_channels=(8, 8, 8)), 1)
    other_map = module_map(other)
    save_masks(tmp_path / "m.safetensors", full_masks(other, other_map.tensor_names))
    with pytest.raises(UserError, match="does not match the network"):
        load_masks(tmp_path / "m.safetensors", module_map(model).shapes)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_masks(tmp_path / "bad.safetensors")


def test_masked_training_zeroes_gradients_of_pruned_weights():
    model = build_model(ModelConfig(preset="tiny", block_out_channels=(8, 8, 8)), 1)
    mmap = module_map(model)
    magnitudes = {n: p.detach() for n, p in model.named_parameters()}
    masks, _ = prune_round(
        "unified", mmap, full_masks(model, mmap.tensor_names), magnitudes, PruneSettings(prune_ratio=0.9)
    )
    hooks = MaskedTraining(model, masks)
    model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).sample.square().mean().backward()
    params = dict(model.named_parameters())
    hooks.after_backward(list(model.parameters()))
    for n, m in masks.items():
        assert (params[n].grad[~m] == 0).all()
        assert params[n].grad[m].abs().sum() > 0


def test_strategies_and_controls_are_registries_matching_the_declared_choices():
    import dataclasses

    from ddpm_lottery.config import PruneConfig
    from ddpm_lottery.lottery.controls import CONTROLS

    choices = next(f for f in dataclasses.fields(PruneConfig) if f.name == "strategy").metadata["choices"]
    # --strategy takes every search strategy, plus "random", the random-mask control
    assert set(choices) == set(STRATEGIES) | {"random"} and set(CONTROLS) == {"reinit", "random", "refill"}
    declared = {f.name for f in dataclasses.fields(PruneConfig)}
    assert all(set(s.reads) <= declared for s in STRATEGIES.values())
    assert STRATEGIES["varying"].imposes_profile and not STRATEGIES["unified"].imposes_profile
