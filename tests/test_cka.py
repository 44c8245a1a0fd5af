"""CKA: the formulas against a direct implementation, and its defining properties."""

import numpy as np
import pytest
import torch

from ddpm_lottery.measures.cka import (
    check_same_architecture,
    cka_from_grams,
    linear_cka,
    linear_gram,
    rbf_cka,
    rbf_gram,
    weight_cka,
)
from ddpm_lottery.utils.errors import UserError


def direct_cka(x, y, kernel, threshold=1.0):
    """Textbook formulas in NumPy: K, L, H = I - 11^T/n, HSIC = tr(KHLH)/(n-1)^2, CKA = normalised HSIC."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)

    def gram(z):
        if kernel == "linear":
            return z @ z.T
        d2 = np.array([[np.sum((a - b) ** 2) for b in z] for a in z])
        return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))

    h = np.eye(n) - np.ones((n, n)) / n
    k, l = gram(x), gram(y)
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 12, generator=g, dtype=torch.float64), torch.randn(20, 12, generator=g, dtype=torch.float64)


def test_self_similarity_is_one(data):
    x, _ = data
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_symmetry(data):
    x, y = data
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert rbf_cka(x, y, 0.5) == pytest.approx(rbf_cka(y, x, 0.5), abs=1e-12)


def test_linear_cka_invariant_to_orthogonal_transforms_and_isotropic_scaling(data):
    x, y = data
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(linear_cka(x, y), abs=1e-10)
    # RBF CKA with a median-scaled bandwidth is invariant to isotropic scaling too
    assert rbf_cka(5 * x, y) == pytest.approx(rbf_cka(x, y), abs=1e-10)


@pytest.mark.parametrize("kernel,threshold", [("linear", 1.0), ("rbf", 1.0), ("rbf", 0.5)])
def test_agrees_with_a_direct_implementation(data, kernel, threshold):
    x, y = data
    ours = linear_cka(x, y) if kernel == "linear" else rbf_cka(x, y, threshold)
    assert ours == pytest.approx(direct_cka(x.numpy(), y.numpy(), kernel, threshold), rel=1e-9)


def test_unrelated_is_low_and_related_is_high(data):
    x, y = data
    assert linear_cka(x, y) < 0.8
    assert linear_cka(x, x + 0.01 * y) > 0.99


def test_constant_kernel_gives_nan_not_an_error():
    zeros = torch.zeros(6, 4)
    assert np.isnan(cka_from_grams(linear_gram(zeros), linear_gram(torch.randn(6, 4))))


def test_rbf_gram_is_a_kernel(data):
    x, _ = data
    k = rbf_gram(x)
    assert torch.allclose(k, k.T) and torch.allclose(torch.diagonal(k), torch.ones(20, dtype=k.dtype))


def test_weight_cka_per_layer_and_architecture_check():
    a = {"conv.weight": torch.randn(8, 4, 3, 3), "lin.weight": torch.randn(6, 5)}
    rows = weight_cka(a, a, ["conv.weight", "lin.weight"])
    assert [r["kind"] for r in rows] == ["conv", "linear"]
    assert all(r["weight_cka_rbf"] == pytest.approx(1.0) and r["weight_cka_linear"] == pytest.approx(1.0) for r in rows)
    b = {"conv.weight": torch.randn(8, 4, 3, 3), "lin.weight": torch.randn(7, 5)}
    with pytest.raises(UserError, match="different architectures"):
        check_same_architecture(a, b, ["conv.weight", "lin.weight"])


@pytest.mark.slow
def test_tickets_kept_as_sparse_exports_compare_by_default(tiny_ticket_run, second_ticket_run, tmp_path):
    """A committed study keeps pruned levels as their sparse export only (no raw weights): CKA with its
    baselines, as the study runs it, compares their EMA weights by default instead of failing."""
    import json
    import shutil

    from ddpm_lottery.config import CkaConfig
    from ddpm_lottery.lottery.costs import level_costs
    from ddpm_lottery.measures.cka import compare_with_baselines
    from ddpm_lottery.runs.run import Run

    copies = []
    for source in (tiny_ticket_run, second_ticket_run):
        copy = tmp_path / source.name
        shutil.copytree(source, copy)
        level = Run.open(copy).level(1)
        level_costs(level)
        level.weights_path("raw").unlink()
        level.weights_path("ema").unlink()
        copies.append(copy)
    result = compare_with_baselines(
        *copies, 1, CkaConfig(batch=4, timesteps=(100,)), out=tmp_path / "cka", log=lambda *_: None
    )
    assert result["summary"]["weights"] == "ema" and "halves" in result["summary"]
    assert json.loads((tmp_path / "cka" / "cka.json").read_text())["weights"] == "ema"
    with pytest.raises(UserError, match="--weights ema"):
        compare_with_baselines(
            *copies, 1, CkaConfig(batch=4, timesteps=(100,), weights="raw"), out=tmp_path / "raw", log=lambda *_: None
        )
