"""``ddpm-lottery evaluate``: FID and KID of run levels, with how they were measured.

Each evaluation is stored as ``RUN/level_XX/eval/<key>.json`` (``RUN/eval/<key>.json`` for a
training run), where the key names the sampler, its steps, eta, N, the seed, the weights, the
reference size and the KID subset size: results measured differently never overwrite each other.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import EvalConfig, to_dict
from .data import from_model_range, load_dataset
from .diffusion import DEFAULT_SAMPLING_STEPS, sample as run_sampler
from .errors import UserError
from .lottery import finished_levels, level_config, level_dir, level_network, run_kind
from .metrics import (
    FEATURE_DIM, InceptionFeatures, biased_note, check_sample_counts, extract_features, fid_kid, reference_features,
    reference_images, reference_key,
)
from .runs import read_json, write_json
from .training import resolve_device


def sampling_steps(config: EvalConfig) -> int:
    steps = DEFAULT_SAMPLING_STEPS[config.sampler] if config.sampling_steps is None else config.sampling_steps
    if steps <= 0:
        raise UserError(f"--sampling-steps must be positive, got {steps}")
    return steps


def eval_key(config: EvalConfig, reference_count: int) -> str:
    steps = sampling_steps(config)
    eta = f"-eta{config.eta:g}" if config.sampler == "ddim" else ""
    return (f"{config.sampler}-{steps}steps{eta}-n{config.num_samples}-seed{config.sample_seed}-{config.weights}"
            f"-ref{reference_count}-kid{config.kid_subset_size}")


def eval_dir(run: Path, level: int) -> Path:
    return run / "eval" if run_kind(run) == "train" else level_dir(run, level) / "eval"


def load_evaluations(run: str | Path, level: int) -> dict[str, dict]:
    folder = eval_dir(Path(run), level)
    return {p.stem: read_json(p, "evaluation") for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _reference(run: Path, config: EvalConfig, extractor: InceptionFeatures, progress: bool, log):
    run_config = level_config(run)
    network = read_json(run / ("ema/config.json" if run_kind(run) == "train" else "network.json"), "network config")
    size, channels = network["sample_size"], network["in_channels"]
    data = run_config.data
    images = load_dataset(data.dataset, data.data_dir, split=config.reference_split, image_size=size,
                          channels=channels).images
    chosen = reference_images(images, config.reference_samples)
    key = reference_key(data.dataset, config.reference_split, data.data_dir, size, channels, len(chosen),
                        extractor.digest)
    started = time.perf_counter()
    features, cached = reference_features(chosen, key, extractor, cache_dir=config.cache_dir, progress=progress)
    log(f"reference: {len(chosen)} {data.dataset} {config.reference_split} images, "
        f"{'cached' if cached else 'computed'} in {time.perf_counter() - started:.1f} s ({key})")
    return features, key, cached


def evaluate(run: str | Path, config: EvalConfig | None = None, levels: list[int] | None = None, *,
             progress: bool = True, log=print, extractor: InceptionFeatures | None = None,
             force: bool = False) -> list[dict]:
    """Evaluate the given levels (default: the last finished one); returns the stored records.

    A level already evaluated with the same settings is read back, not recomputed, unless ``force``.
    """
    config = config or EvalConfig()
    run = Path(run)
    available = finished_levels(run)
    if not available:
        raise UserError(f"{run} has no level with trained weights yet; train or run find-ticket first")
    levels = levels if levels is not None else [available[-1]]
    for level in levels:
        if level not in available:
            raise UserError(f"{run} has no trained level {level} (finished: {', '.join(map(str, available))})")
    steps = sampling_steps(config)
    if config.num_samples < 2:
        raise UserError(f"--num-samples must be at least 2 for FID, got {config.num_samples}; use ≥ 2048 for an "
                        "unbiased-enough FID")
    check_sample_counts(config.num_samples, config.reference_samples, config.kid_subset_size)
    device = resolve_device(config.device)
    extractor = extractor or InceptionFeatures(config.feature_network)
    reference, reference_name, _ = _reference(run, config, extractor, progress, log)
    check_sample_counts(config.num_samples, len(reference), config.kid_subset_size)
    key = eval_key(config, len(reference))
    diffusion = level_config(run).diffusion
    records = []
    for level in levels:
        existing = eval_dir(run, level) / f"{key}.json"
        if existing.exists() and not force:
            record = read_json(existing, "evaluation")
            records.append(record)
            log(describe(record, run) + " [stored]")
            continue
        started = time.perf_counter()
        model = level_network(run, level, config.weights).to(device)
        bar = tqdm(total=1, disable=not progress, desc=f"level {level}: sampling", unit="call", leave=False)

        def on_step(done, total, bar=bar):
            bar.total = total
            bar.update(done - bar.n)

        images = run_sampler(model, diffusion, sampler=config.sampler, num_steps=steps,
                             num_samples=config.num_samples, seed=config.sample_seed,
                             batch_size=config.sample_batch_size, eta=config.eta, device=device, on_step=on_step)
        bar.close()
        sampling_time = time.perf_counter() - started
        features = extract_features(extractor, from_model_range(images), progress=progress,
                                    description=f"level {level}: inception")
        scores = fid_kid(reference, features, kid_subset_size=config.kid_subset_size, kid_subsets=config.kid_subsets)
        record = {
            **scores, "level": level, "num_samples": config.num_samples, "reference_samples": len(reference),
            "reference": reference_name, "sampler": config.sampler, "steps": steps,
            "eta": config.eta if config.sampler == "ddim" else None, "seed": config.sample_seed,
            "weights": config.weights, "kid_subset_size": config.kid_subset_size, "kid_subsets": config.kid_subsets,
            "feature_network": f"{extractor.path.name} (sha256 {extractor.digest}, TF Inception-v3 pool3, "
                               f"{FEATURE_DIM}-d)",
            "biased_warning": biased_note(config.num_samples), "sampling_time_s": sampling_time,
            "wall_time_s": time.perf_counter() - started, "device": str(device), "config": to_dict(config),
            "time": time.time(),
        }
        write_json(eval_dir(run, level) / f"{key}.json", record)
        records.append(record)
        log(describe(record, run))
    return records


def describe(record: dict, run: Path | str = "") -> str:
    warning = " [strongly biased: N < 2048, read KID]" if record.get("biased_warning") else ""
    return (f"{run} level {record['level']}: FID {record['fid']:.2f}{warning}, KID {record['kid_mean']:.4f} ± "
            f"{record['kid_std']:.4f} (N={record['num_samples']} vs {record['reference_samples']} reference, "
            f"{record['sampler']} {record['steps']} steps, seed {record['seed']}, {record['weights']} weights, "
            f"{record['wall_time_s']:.0f} s)")


__all__ = ["evaluate", "load_evaluations", "eval_key", "describe"]
