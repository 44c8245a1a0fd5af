"""Evaluation throughput: the FID feature network, each sampler, the cached reference, and each measure
of one level at a study's protocol.

    python benchmarks/evaluate.py [--preset tiny] [--images 64] [--samples 64] [--study cpu-digits] [--level-n N]

The last table measures one level of a freshly trained tiny run with every measure of the study's
``[eval]`` (its sampler, steps, bootstrap rounds, held-out images), at ``--level-n`` samples (default:
the study's N), and prints images/s and seconds per level, to compare with a level's training time.

Prints images/s of the TF Inception-v3 (TorchScript, 299x299) on 28x28 digits, images/s of each
sampler at its default step count for the preset (DDPM 1000, DDIM 50, DPM-Solver++ 20 denoiser
calls per image), and the time to get reference features computed versus read from the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import seconds

from ddpm_lottery.config import DiffusionConfig, ModelConfig
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.measures.inception import InceptionFeatures, extract_features, feature_batch_size, reference_features
from ddpm_lottery.models.diffusion import DEFAULT_SAMPLING_STEPS, SAMPLERS, sample
from ddpm_lottery.models.networks import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=64, help="images through the feature network")
    parser.add_argument("--samples", type=int, default=64, help="images per sampler")
    parser.add_argument("--study", default="cpu-digits", help="study whose [eval] protocol is timed per measure")
    parser.add_argument("--level-n", type=int, default=None, help="samples per level [default: the study's N]")
    parser.add_argument("--skip-basics", action="store_true", help="only the per-measure table")
    args = parser.parse_args()
    if args.skip_basics:
        measures_per_level(args.study, args.level_n)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    images = load_dataset("embedded").images
    extractor = InceptionFeatures()
    # the default batch (small on a CPU, where it keeps activations in cache) against a GPU-sized one
    for batch in dict.fromkeys((feature_batch_size(extractor.device), 50)):
        extract_features(extractor, images[:batch], batch_size=batch, progress=False)  # warm-up, this shape
        start = time.perf_counter()
        extract_features(extractor, images[: args.images], batch_size=batch, progress=False)
        feature_rate = args.images / (time.perf_counter() - start)
        print(f"{f'feature network (Inception-v3 299x299), batch {batch}':<46}{feature_rate:>10.1f} images/s")

    model = build_model(ModelConfig(preset=args.preset), 1)
    for sampler in SAMPLERS:
        steps = DEFAULT_SAMPLING_STEPS[sampler]
        count = args.samples if sampler != "ddpm" else max(8, args.samples // 4)
        start = time.perf_counter()
        sample(model, DiffusionConfig(), sampler=sampler, num_steps=steps, num_samples=count, batch_size=count)
        rate = count / (time.perf_counter() - start)
        print(f"{f'{args.preset}, {sampler} {steps} steps':<46}{rate:>10.1f} images/s")

    # the Fréchet distance itself: torchmetrics' compute() (general eigvals of a 2048x2048 product)
    # against ours (two symmetric eigendecompositions; the n x n form below N = 2048)
    from torchmetrics.image.fid import FrechetInceptionDistance

    from ddpm_lottery.measures.inception import _PassThrough, fid_kid

    for count in (2048, 128):
        g = torch.Generator().manual_seed(0)
        real = torch.rand(count, 2048, generator=g, dtype=torch.float64)
        fake = torch.rand(count, 2048, generator=g, dtype=torch.float64) * 1.1
        metric = FrechetInceptionDistance(feature=_PassThrough())
        metric.update(real, real=True)
        metric.update(fake, real=False)
        start = time.perf_counter()
        theirs = float(metric.compute())
        theirs_s = time.perf_counter() - start
        start = time.perf_counter()
        ours = fid_kid(real, fake, kid_subset_size=min(100, count), kid_subsets=1)["fid"]
        ours_s = time.perf_counter() - start
        print(f"{f'FID of N={count} 2048-d features: torchmetrics':<46}{theirs_s:>10.2f} s  (FID {theirs:.4f})")
        print(
            f"{f'FID of N={count} 2048-d features: ddpm-lottery':<46}{ours_s:>10.2f} s  (FID {ours:.4f}, "
            f"{theirs_s / ours_s:.2g}x torchmetrics' speed)"
        )

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        reference_features(images[: args.images], "bench", extractor, cache_dir=cache, progress=False)
        computed = time.perf_counter() - start
        start = time.perf_counter()
        reference_features(images[: args.images], "bench", extractor, cache_dir=cache, progress=False)
        cached = time.perf_counter() - start
    print(f"{f'reference of {args.images} images: computed':<46}{computed:>10.2f} s")
    print(
        f"{f'reference of {args.images} images: from the cache':<46}{cached:>10.3f} s  "
        f"(saves {computed - cached:.1f} s; {computed / max(cached, 1e-9):.0f}x)"
    )
    measures_per_level(args.study, args.level_n)


def measures_per_level(study_name: str, level_n: int | None) -> None:
    """Each measure of one level at the study's protocol: sampling once, then each measure's own cost."""
    from ddpm_lottery.api import find_ticket
    from ddpm_lottery.measures.evaluate import Evaluator
    from ddpm_lottery.runs.run import Run
    from ddpm_lottery.study.spec import load_study

    study = load_study(study_name)
    config = study.evaluation
    if level_n:
        config.num_samples = level_n
    with tempfile.TemporaryDirectory() as work:
        ticket = study.search_config(next(iter(study.searches)), 0)
        ticket.train.steps = 20
        ticket.train.checkpoint_every = 10
        ticket.prune.sparsity_schedule = ()
        ticket.prune.max_rounds = 1
        ticket.prune.target_sparsity = 0.5
        ticket.runtime.device = "cpu"
        run = Run.open(find_ticket(ticket, f"{work}/run", progress=False, log=lambda *_: None))
        level = run.level(1)
        config.cache_dir = f"{work}/cache"
        evaluator = Evaluator(config, progress=False, log=lambda *_: None)
        for measure in config.measures:  # references, the domain network: once per study, not per level
            evaluator.spec(measure, run)
        sampling = seconds(lambda: evaluator.samples(level))
        n = config.num_samples
        print(
            f"\nper level, {study_name}'s protocol ({config.sampler} {config.sampling_steps} steps, N={n}, "
            f"{config.bootstrap_rounds} bootstrap rounds), {torch.get_num_threads()} threads:"
        )
        print(f"{'part':<34}{'images/s':>10}{'s per level':>14}")
        print(f"{'sampling (shared by image measures)':<34}{n / sampling:>10.1f}{sampling:>14.1f}")
        total = sampling
        for measure in config.measures:
            took = seconds(lambda: evaluator.measure(level, measure, force=True))
            images = config.heldout_images if measure == "loss" else n
            total += took
            print(
                f"{measure + (' (held-out images)' if measure == 'loss' else ''):<34}{images / took:>10.1f}"
                f"{took:>14.1f}"
            )
        print(f"{'all measures of one level':<34}{'':>10}{total:>14.1f}")


if __name__ == "__main__":
    main()
