"""``ddpm-lottery evaluate``: FID and KID of run levels, stored with everything that made them.

An evaluation is keyed by its *protocol*: the sampler, its steps and eta, N, the sampling seed,
the weights, the reference images (dataset, split, count, and a digest of the images
themselves), the KID subset size and count, and the feature network's digest.  Change any of
these and it is a different evaluation, stored beside the others; the same protocol is read
back instead of recomputed.  The generated images are stored with the result (uint8, ``.npz``),
so reports and later measures read them instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import EvalConfig, to_dict
from .data import from_model_range, load_dataset
from .diffusion import sample as run_sampler, sampling_steps
from .files import atomic_path, write_json
from .metrics import (
    FEATURE_DIM, InceptionFeatures, biased_note, check_sample_counts, extract_features, fid_kid, reference_features,
    reference_images,
)
from .runs import Level, Run
from .training import resolve_device


def protocol(config: EvalConfig, reference: dict, feature_digest: str) -> dict:
    """Everything that affects an evaluation's numbers (and nothing that does not, such as the device)."""
    sampling, scoring = config.sampling, config.eval
    return {"sampler": sampling.sampler, "steps": sampling_steps(sampling),
            "eta": sampling.eta if sampling.sampler == "ddim" else None, "num_samples": scoring.num_samples,
            "seed": sampling.sample_seed, "weights": sampling.weights, "reference": reference,
            "kid_subset_size": scoring.kid_subset_size, "kid_subsets": scoring.kid_subsets,
            "feature_network": feature_digest}


def protocol_key(spec: dict) -> str:
    """A readable prefix and a digest of the whole protocol."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return (f"{spec['sampler']}-{spec['steps']}steps-n{spec['num_samples']}-seed{spec['seed']}-{spec['weights']}"
            f"-{digest}")


def protocol_label(record: dict) -> str:
    """How a figure was measured, in one phrase."""
    ref = record.get("reference", {})
    eta = f", eta {record['eta']:g}" if record.get("eta") else ""
    return (f"N={record['num_samples']} vs {ref.get('count', record.get('reference_samples'))} "
            f"{ref.get('dataset', '')} {ref.get('split', '')} images, {record['sampler']} {record['steps']} steps{eta}, "
            f"seed {record['seed']}, {record['weights']} weights")


def _reference(run: Run, config: EvalConfig, extractor, progress: bool, log) -> tuple[torch.Tensor, dict]:
    network = run.network_config()
    size, channels = network["sample_size"], network["in_channels"]
    data = run.config.data
    scoring = config.eval
    images = load_dataset(data.dataset, data.data_dir, split=scoring.reference_split, image_size=size,
                          channels=channels).images
    chosen = reference_images(images, scoring.reference_samples)
    from .data import image_digest

    reference = {"dataset": data.dataset, "split": scoring.reference_split, "count": len(chosen),
                 "size": size, "channels": channels, "images": image_digest(chosen)}
    started = time.perf_counter()
    key = (f"{data.dataset}-{scoring.reference_split}-{size}px-{channels}ch-n{len(chosen)}-{reference['images']}"
           f"-inception{extractor.digest}")
    features, cached = reference_features(chosen, key, extractor, cache_dir=scoring.cache_dir, progress=progress)
    log(f"reference: {len(chosen)} {data.dataset} {scoring.reference_split} images, "
        f"{'cached' if cached else 'computed'} in {time.perf_counter() - started:.1f} s")
    return features, reference


def generate(level: Level, config: EvalConfig, device: torch.device, progress: bool) -> torch.Tensor:
    """The level's N images (uint8), sampled with the protocol's sampler and seed."""
    sampling = config.sampling
    model = level.network(sampling.weights).to(device)
    bar = tqdm(total=1, disable=not progress, desc=f"level {level.index}: sampling", unit="call", leave=False)

    def on_step(done, total):
        bar.total = total
        bar.update(done - bar.n)

    images = run_sampler(model, level.run.config.diffusion, sampler=sampling.sampler,
                         num_steps=sampling_steps(sampling), num_samples=config.eval.num_samples,
                         seed=sampling.sample_seed, batch_size=sampling.sample_batch_size, eta=sampling.eta,
                         device=device, on_step=on_step)
    bar.close()
    return from_model_range(images)


def save_samples(path: Path, images: torch.Tensor) -> None:
    """uint8 (N, H, W, C) under ``arr_0``, the key common evaluator scripts read."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, arr_0=images.permute(0, 2, 3, 1).numpy())


def load_samples(path: Path) -> torch.Tensor:
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).contiguous()


def evaluate(run: str | Path, config: EvalConfig | None = None, levels: list[int] | None = None, *,
             progress: bool = True, log=print, extractor: InceptionFeatures | None = None,
             force: bool = False) -> list[dict]:
    """Evaluate the given levels (default: the last finished one); returns the stored records.

    A level already evaluated with the same protocol is read back, not recomputed, unless ``force``
    (which replaces that one record only).
    """
    config = config or EvalConfig()
    run = Run.open(run)
    chosen = [run.last_level()] if levels is None else [run.level(i).require_finished() for i in levels]
    scoring = config.eval
    sampling_steps(config.sampling)
    check_sample_counts(scoring.num_samples, scoring.reference_samples, scoring.kid_subset_size)
    device = resolve_device(config.runtime.device)
    extractor = extractor or InceptionFeatures(scoring.feature_network)
    reference_feats, reference = _reference(run, config, extractor, progress, log)
    check_sample_counts(scoring.num_samples, len(reference_feats), scoring.kid_subset_size)
    spec = protocol(config, reference, extractor.digest)
    key = protocol_key(spec)
    records = []
    for level in chosen:
        path = level.evaluation_path(key)
        if path.exists() and not force:
            record = next(r for r in level.evaluations() if r["key"] == key)
            records.append(record)
            log(describe(record, run.root) + " [stored]")
            continue
        started = time.perf_counter()
        images = generate(level, config, device, progress)
        sampling_time = time.perf_counter() - started
        save_samples(level.evaluation_samples_path(key), images)
        features = extract_features(extractor, images, progress=progress, description=f"level {level.index}: inception")
        scores = fid_kid(reference_feats, features, kid_subset_size=scoring.kid_subset_size,
                         kid_subsets=scoring.kid_subsets)
        record = {
            **scores, "key": key, "level": level.index, **spec, "reference_samples": len(reference_feats),
            "feature_network_file": f"{extractor.path.name} (TF Inception-v3 pool3, {FEATURE_DIM}-d)",
            "biased_warning": biased_note(scoring.num_samples), "sampling_time_s": sampling_time,
            "wall_time_s": time.perf_counter() - started, "device": str(device), "config": to_dict(config),
            "time": time.time(), "samples_file": level.evaluation_samples_path(key).name,
        }
        write_json(path, record)
        records.append(record)
        log(describe(record, run.root))
    return records


def describe(record: dict, run: Path | str = "") -> str:
    warning = " [strongly biased: N < 2048, read KID]" if record.get("biased_warning") else ""
    return (f"{run} level {record['level']}: FID {record['fid']:.2f}{warning}, KID {record['kid_mean']:.4f} ± "
            f"{record['kid_std']:.4f} ({protocol_label(record)}, {record['wall_time_s']:.0f} s)")


__all__ = ["evaluate", "describe", "protocol", "protocol_key", "protocol_label", "load_samples"]
