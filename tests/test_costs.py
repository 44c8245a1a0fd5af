"""FLOPs, parameters and storage."""

import pytest
import torch

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.models.networks import build_model
from ddpm_lottery.pruning.costs import layer_flops, parameter_counts, ticket_flops
from ddpm_lottery.pruning.masks import full_masks
from ddpm_lottery.pruning.modules import module_map
from ddpm_lottery.pruning.strategies import PruneSettings, prune_round
from ddpm_lottery.runs.sparse_export import export_sparse, load_sparse


def test_ddpm_cifar10_counts_about_6_1_gmacs():
    model = build_model(ModelConfig(preset="ddpm-cifar10"))
    total, per_layer = layer_flops(model)
    assert 6.0e9 < total / 2 < 6.3e9  # the DDPM CIFAR-10 U-Net's known ~6.1 GMACs (6.22 with attention products)
    assert sum(per_layer.values()) < total  # attention products and the rest are outside conv/linear


@pytest.fixture(scope="module")
def tiny():
    model = build_model(ModelConfig(preset="tiny"), 1)
    return model, module_map(model)


def test_dense_masks_reduce_nothing(tiny):
    model, mmap = tiny
    result = ticket_flops(model, full_masks(model, mmap.tensor_names), mmap)
    assert result["reduction"] == 0 and result["effective_flops"] == result["dense_flops"]


def test_effective_flops_scale_each_layer_by_its_density(tiny):
    model, mmap = tiny
    masks = full_masks(model, mmap.tensor_names)
    masks["conv_in.weight"][:] = False  # conv_in fully off: exactly its FLOPs disappear
    _, per_layer = layer_flops(model)
    result = ticket_flops(model, masks, mmap)
    assert result["dense_flops"] - result["effective_flops"] == pytest.approx(per_layer["conv_in"])
    half = full_masks(model, mmap.tensor_names)
    half["conv_out.weight"].view(-1)[: half["conv_out.weight"].numel() // 2] = False
    result = ticket_flops(model, half, mmap)
    assert result["dense_flops"] - result["effective_flops"] == pytest.approx(per_layer["conv_out"] / 2, rel=0.01)
    module = next(m for m in result["per_module"] if m["name"] == "conv_out")
    assert module["reduction"] == pytest.approx(0.5, abs=0.01)


def test_sparse_export_round_trip_and_size(tmp_path, tiny):
    model, mmap = tiny
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks, _ = prune_round(
        "global", mmap, full_masks(model, mmap.tensor_names), weights, PruneSettings(prune_ratio=0.9)
    )
    sparse = {n: torch.where(masks[n], w, torch.zeros(())) if n in masks else w for n, w in weights.items()}
    size = export_sparse(sparse, masks, tmp_path / "sparse.safetensors")
    restored = load_sparse(tmp_path / "sparse.safetensors")
    assert restored.keys() == sparse.keys() and all(torch.equal(restored[n], sparse[n]) for n in sparse)
    dense_bytes = 4 * sum(w.numel() for w in weights.values())
    assert size < 0.3 * dense_bytes
    counts = parameter_counts(weights, masks)
    assert counts["surviving_parameters"] == counts["dense_parameters"] - sum(int((~m).sum()) for m in masks.values())
