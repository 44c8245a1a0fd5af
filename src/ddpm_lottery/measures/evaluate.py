"""``ddpm-lottery evaluate``: quality measures of run levels, each with its interval, stored with how it was made.

Four measures (``--measures``), all "lower is better":

* ``inception``: FID on the standard Inception-v3 pool3 features, with KID (mean ± std over subsets)
  beside it: the paper's measure, comparable with published numbers only at their N;
* ``domain``: the Fréchet distance on the 64-d features of a small classifier trained on the run's own
  training images (:mod:`.domain`): ranks CPU-scale models with a few hundred samples in seconds;
* ``loss``: the held-out denoising loss, per timestep band, on held-out images with fixed noise: needs no
  sampling, and shows *where* in the reverse process a network loses (a class-conditional network is given
  each image's class);
* ``class-accuracy``: of a class-conditional model, how often the domain classifier names the class each image
  was asked for, stored as the error rate (the accuracy and its interval beside it).

The generated images are drawn once per *sampling protocol* (sampler, steps, eta, N, seed, weights) and
stored beside the level as ``eval/<sampling key>.npz``; every image measure reads them.  A measure's
record is keyed by its whole protocol (the sampling protocol, the reference images and their digest,
the feature network's digest, the bootstrap) and stored as ``eval/<measure key>.json``; the same
protocol is read back instead of recomputed.

**Intervals.** Every record holds the measure's value on all images and its value on
``bootstrap_rounds`` resamples (with replacement) of the generated images, or of the held-out images
for the loss.  The resampling indices depend only on the image count and the round, so two levels
evaluated alike are resampled *identically*: image i of both comes from the same noise, and the
difference of their resamples is a paired bootstrap of their difference (:mod:`.findings` uses
this).  The interval is the resamples' percentile interval re-centred on the value: resampling with
replacement duplicates images, which inflates a Fréchet distance, and the shift removes that bias.

One concept (evaluating a level: its samples, the measures and their stored records), so one module past 400
lines.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm_lottery.config import EvalConfig, check_config, interval_floor, to_dict
from ddpm_lottery.data.images import data_fingerprint, from_model_range, image_digest, to_model_range
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.kernels.install import install_kernels, kernel_record
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.lottery.stages import StagedLevel
from ddpm_lottery.measures.domain import box_blur, class_agreement, domain_features, domain_net, uniform_noise
from ddpm_lottery.measures.inception import (
    FEATURE_DIM,
    FrechetReference,
    InceptionFeatures,
    biased_note,
    bootstrap_indices,
    cache_root,
    check_sample_counts,
    extract_features,
    fid_kid,
    frechet_bootstrap,
    reference_features,
    reference_images,
)
from ddpm_lottery.measures.protocol import (
    measure_key,
    protocol_label,
    sampling_key,
    sampling_protocol,
)
from ddpm_lottery.measures.stats import centred_interval
from ddpm_lottery.models.conditioning import guidance_for, run_classes
from ddpm_lottery.models.diffusion import denoising_loss_by_band, sampling_steps
from ddpm_lottery.models.diffusion import sample as run_sampler
from ddpm_lottery.models.networks import input_size
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.training.tracking import Tracking
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import atomic_path, load_arrays, save_arrays, write_json
from ddpm_lottery.utils.launch import resolve_device

# Resampling indices are a function of (count, round) only, so every level is resampled alike.
BOOTSTRAP_SEED = 0


# ----------------------------------------------------------------------------------------------
# Images


def generate(
    level: Level, config: EvalConfig, device: torch.device, progress: bool, parts: Path | None = None, log=print
) -> tuple[torch.Tensor, dict]:
    """The level's N images (uint8), sampled with the protocol's sampler and seed.

    With ``parts``, every finished batch is kept in that folder, so a killed evaluation resumes at the batch it
    was drawing (DDPM 1,000 steps at N = 50,000 takes hours even on a GPU). Batches are the same whether drawn
    at once or in parts: each image has its own noise generator, and a batch holds the same images either way.
    Also returns how they were drawn: the seconds, and the kernels that ran (``--kernels``).
    """
    sampling = config.sampling
    guidance = guidance_for(sampling, run_classes(level.run.config))
    model = level_network(level, sampling.weights).to(device)
    kernels = install_kernels(model, config.runtime, log=log, what=level.label())
    started = time.perf_counter()
    total, batch, steps = config.eval.num_samples, sampling.sample_batch_size, sampling_steps(sampling)
    bar = tqdm(
        total=steps * -(-total // batch),
        disable=not progress,
        desc=f"{level.label()}: sampling",
        unit="call",
        leave=True,
    )
    drawn = []
    for first in range(0, total, batch):
        count = min(batch, total - first)
        part = parts / f"{first:08d}-{count:06d}.npy" if parts is not None else None
        images = _stored_part(part, count)
        if images is None:
            before = bar.n
            floats = run_sampler(
                model,
                level.run.config.diffusion,
                sampler=sampling.sampler,
                num_steps=steps,
                num_samples=count,
                seed=sampling.sample_seed,
                batch_size=count,
                eta=sampling.eta,
                clip_sample=sampling.clip_sample,
                device=device,
                first_index=first,
                on_step=lambda done, _total: bar.update(before + done - bar.n),
                guidance=guidance,
            )
            images = from_model_range(floats)
            if part is not None:
                with atomic_path(part) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, images.numpy(), allow_pickle=False)
        bar.update((first // batch + 1) * steps - bar.n)  # a batch read back counts as drawn
        drawn.append(images)
    bar.close()
    info = {"sampling_wall_time_s": time.perf_counter() - started, **kernel_record(model, kernels)}
    return torch.cat(drawn), info


def _stored_part(path: Path | None, count: int) -> torch.Tensor | None:
    """A batch a killed evaluation finished, if it is there and whole."""
    if path is None or not path.exists():
        return None
    try:
        images = torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError):
        return None  # damaged: drawn again (seeded, so the same images)
    return images if len(images) == count and images.dtype == torch.uint8 else None


def save_samples(path: Path, images: torch.Tensor) -> None:
    """uint8 (N, H, W, C) under ``arr_0``, the key common evaluator scripts read."""
    save_arrays(path, arr_0=images.permute(0, 2, 3, 1).numpy())


def load_samples(path: Path) -> torch.Tensor:
    images = load_arrays(path, "evaluation samples", f"delete {path} and evaluate again")["arr_0"]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# Measures


@dataclass(frozen=True)
class Measure:
    name: str
    label: str  # the headline figure's name in tables
    description: str
    uses_samples: bool


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("inception", "FID", "Fréchet distance on Inception-v3 pool3 features (KID beside it)", True),
        Measure("domain", "domain FD", "Fréchet distance on the features of a classifier of the training images", True),
        Measure("loss", "held-out loss", "denoising MSE on held-out images with fixed noise, per timestep band", False),
        # stored as the error rate, lower is better as every other measure; the accuracy is stored beside it
        Measure(
            "class-accuracy",
            "class error",
            "1 - the fraction of a class-conditional model's images the domain classifier names as the class asked",
            True,
        ),
    )
}


class Evaluator:
    """Measures levels with one protocol; references, feature networks and held-out images are loaded once.

    One evaluator serves every run of a study whose runs share a dataset and network shape.
    """

    def __init__(
        self, config: EvalConfig, *, progress: bool = True, log=print, extractor: InceptionFeatures | None = None
    ):
        self.config = check_config(config)
        scoring = config.eval
        sampling_steps(config.sampling)
        if "inception" in scoring.measures:
            check_sample_counts(scoring.num_samples, scoring.reference_samples, scoring.kid_subset_size)
        self.progress, self.log = progress, log
        self.device = resolve_device(config.runtime.device)
        self._extractor = extractor
        self._cache: dict[tuple, object] = {}
        self.drawn: dict[str, dict] = {}  # level folder -> how its images were just drawn (seconds, kernels)

    # -- shared resources, loaded on first use ---------------------------------------------------

    def _once(self, key: tuple, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def extractor(self) -> InceptionFeatures:
        if self._extractor is None:
            self._extractor = InceptionFeatures(self.config.eval.feature_network)
        return self._extractor

    def _images(self, run: Run, split: str):
        data, network = run.config.data, run.network_config()
        return self._once(
            ("images", data.dataset, data.data_dir, split, network["sample_size"], network["in_channels"]),
            lambda: load_dataset(
                data.dataset,
                data.data_dir,
                split=split,
                image_size=network["sample_size"],
                channels=network["in_channels"],
            ),
        )

    def _reference(self, run: Run) -> tuple[torch.Tensor, dict]:
        scoring = self.config.eval
        images = self._images(run, scoring.reference_split).images
        chosen = self._once(
            ("reference", id(images), scoring.reference_samples),
            lambda: reference_images(images, scoring.reference_samples),
        )
        network = run.network_config()
        spec = {
            "dataset": run.config.data.dataset,
            "split": scoring.reference_split,
            "count": len(chosen),
            "size": network["sample_size"],
            "channels": network["in_channels"],
            "images": image_digest(chosen),
        }
        return chosen, spec

    def _inception_reference(self, run: Run) -> tuple[torch.Tensor, FrechetReference, dict]:
        chosen, spec = self._reference(run)

        def make():
            started = time.perf_counter()
            key = (
                f"{spec['dataset']}-{spec['split']}-{spec['size']}px-{spec['channels']}ch-n{spec['count']}-"
                f"{spec['images']}-inception{self.extractor.digest}"
            )
            features, cached = reference_features(
                chosen, key, self.extractor, cache_dir=self.config.eval.cache_dir, progress=self.progress
            )
            self.log(
                f"Inception reference: {len(chosen)} {spec['dataset']} {spec['split']} images, "
                f"{'cached' if cached else 'computed'} in {time.perf_counter() - started:.1f} s"
            )
            return features, FrechetReference(features)

        features, frechet = self._once(("inception-reference", spec["images"], self.extractor.digest), make)
        return features, frechet, spec

    def _domain(self, run: Run):
        data = run.config.data
        train = self._images(run, "train")

        def make():
            fingerprint = data_fingerprint(train, "train")
            return domain_net(train, fingerprint, cache_dir=cache_root(self.config.eval.cache_dir), log=self.log)

        net, info = self._once(("domain-net", data.dataset, data.data_dir, id(train)), make)
        chosen, spec = self._reference(run)
        frechet = self._once(
            ("domain-reference", spec["images"], info["key"]), lambda: FrechetReference(domain_features(net, chosen))
        )
        return net, info["key"], frechet, spec

    def _heldout(self, run: Run) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """The held-out images, their spec, and their labels where the run is class-conditional (its network then
        predicts each image's noise given the image's own class)."""
        scoring = self.config.eval
        try:
            held = self._images(run, scoring.heldout_split)
            images = held.images
        except UserError as exc:
            raise UserError(
                f"the loss measure needs held-out images ({exc}); set --heldout-split to a split "
                "the dataset has, or drop loss from --measures"
            ) from None
        chosen = reference_images(images, scoring.heldout_images, seed=1)
        if len(chosen) < interval_floor(scoring.confidence):
            raise UserError(
                f"the {scoring.heldout_split} split has {len(chosen)} images, too few for a "
                f"{scoring.confidence:.0%} interval of the held-out loss; use another --heldout-split"
            )
        spec = {
            "dataset": run.config.data.dataset,
            "split": scoring.heldout_split,
            "count": len(chosen),
            "images": image_digest(chosen),
        }
        if run_classes(run.config) is None:
            return chosen, spec, None
        # the same seeded choice as the images' (one permutation of the split's length)
        labels = reference_images(held.labels, scoring.heldout_images, seed=1)
        return chosen, {**spec, "labels": "conditional"}, labels

    # -- specs -----------------------------------------------------------------------------------

    def sampling(self, run: Run) -> dict:
        """The sampling protocol of ``run``'s images (a class-conditional run's names its guidance)."""
        return sampling_protocol(self.config, run_classes(run.config))

    def spec(self, measure: str, run: Run) -> dict:
        """The whole protocol of ``measure`` on ``run``'s levels (loads the references it names)."""
        scoring = self.config.eval
        common = {"measure": measure, "bootstrap_rounds": scoring.bootstrap_rounds, "bootstrap_seed": BOOTSTRAP_SEED}
        if measure == "inception":
            _, _, reference = self._inception_reference(run)
            return {
                **common,
                "sampling": self.sampling(run),
                "reference": reference,
                "feature_network": self.extractor.digest,
                "kid_subset_size": scoring.kid_subset_size,
                "kid_subsets": scoring.kid_subsets,
            }
        if measure == "domain":
            _, key, _, reference = self._domain(run)
            return {**common, "sampling": self.sampling(run), "reference": reference, "feature_network": key}
        if measure == "class-accuracy":
            if run_classes(run.config) is None:
                raise UserError(
                    f"class-accuracy measures class-conditional models, and {run.root} is unconditional; "
                    "drop it from --measures"
                )
            _, key, _, _ = self._domain(run)
            return {**common, "sampling": self.sampling(run), "classifier": key}
        _, heldout, _ = self._heldout(run)
        return {
            **common,
            "heldout": heldout,
            "bands": scoring.loss_bands,
            "seed": self.config.sampling.sample_seed,
            "weights": self.config.sampling.weights,
        }

    # -- measuring -------------------------------------------------------------------------------

    def samples(self, level: Level) -> torch.Tensor:
        """The level's generated images for this protocol: from ``eval/`` when stored, else drawn and stored."""
        path = level.samples_path(sampling_key(self.sampling(level.run)))
        if path.exists():
            try:
                images = load_samples(path)
                if len(images) == self.config.eval.num_samples:
                    return images
            except KeyError:
                pass  # not the samples file: drawn again (seeded, so the same images) and replaced
            except UserError as exc:  # damaged or failing its seal: never used, drawn again and replaced
                self.log(f"{exc.args[0].split(';')[0]}; drawing its images again")
        parts = path.with_name(f".{path.stem}.parts")
        images, self.drawn[str(level.dir)] = generate(
            level, self.config, self.device, self.progress, parts=parts, log=self.log
        )
        save_samples(path, images)
        shutil.rmtree(parts, ignore_errors=True)
        return images

    def measure(self, level: Level, measure: str, *, force: bool = False) -> dict:
        """One measure of one level: the stored record for this protocol, or computed now and stored."""
        spec = self.spec(measure, level.run)
        key = measure_key(measure, spec)
        path = level.evaluation_path(key)
        if path.exists() and not force:
            record = next(r for r in level.evaluations() if r["key"] == key)
            self.log(describe(record, level.run.root) + " [stored]")
            return record
        started = time.perf_counter()
        scoring = self.config.eval
        extra: dict = {}
        if measure == "loss":
            images, _, labels = self._heldout(level.run)
            model = level_network(level, self.config.sampling.weights).to(self.device)
            kernels = install_kernels(model, self.config.runtime, log=self.log, what=level.label())
            per_image = denoising_loss_by_band(
                model,
                level.run.config.diffusion,
                to_model_range(images),
                bands=scoring.loss_bands,
                seed=self.config.sampling.sample_seed,
                device=self.device,
                labels=labels,
            )
            extra.update(kernel_record(model, kernels))
            save_arrays(level.evaluation_array_path(key), losses=per_image.numpy())
            totals = per_image.mean(1)
            value = float(totals.mean())
            replicates = [
                float(totals[index].mean())
                for index in bootstrap_indices(len(totals), scoring.bootstrap_rounds, BOOTSTRAP_SEED)
            ]
            extra.update({"bands": per_image.mean(0).tolist(), "per_image_file": level.evaluation_array_path(key).name})
        else:
            images = self.samples(level)
            if measure == "inception":
                reference, frechet, _ = self._inception_reference(level.run)
                features = extract_features(
                    self.extractor, images, progress=self.progress, description=f"{level.label()}: inception"
                )
                scores = fid_kid(
                    reference, features, kid_subset_size=scoring.kid_subset_size, kid_subsets=scoring.kid_subsets
                )
                value = scores["fid"]
                extra = {**scores, "biased_warning": biased_note(len(images))}
            elif measure == "domain":
                net, _, frechet, _ = self._domain(level.run)
                features = domain_features(net, images)
                value = frechet.distance(features)
                extra = {"fd": value}
            else:
                value, replicates, extra = self._class_error(level, images)
            if measure != "class-accuracy":
                replicates = frechet_bootstrap(frechet, features, scoring.bootstrap_rounds, BOOTSTRAP_SEED)
        low, high = centred_interval(value, replicates, scoring.confidence)
        if measure != "loss":  # the seconds and kernels of the images, when this measure drew them
            extra.update(self.drawn.pop(str(level.dir), {}))
        record = {
            "key": key,
            "measure": measure,
            **level.record_fields(),
            "value": value,
            "interval": [low, high],
            "confidence": scoring.confidence,
            "replicates": replicates,
            "protocol": spec,
            **extra,
            "wall_time_s": time.perf_counter() - started,
            "device": str(self.device),
            "config": to_dict(self.config),
            "time": time.time(),
        }
        record["label"] = protocol_label(record)
        write_json(path, record)
        self.log(describe(record, level.run.root))
        return record

    def _class_error(self, level: Level, images: torch.Tensor) -> tuple[float, list[float], dict]:
        """How often the domain classifier does not name the class each image was drawn for: the value, its
        bootstrap resamples (the same image indices as every other measure's), and the accuracy beside them."""
        scoring = self.config.eval
        guidance = guidance_for(self.config.sampling, run_classes(level.run.config))
        net, _, _, _ = self._domain(level.run)
        correct = class_agreement(net, images, guidance.labels(0, len(images)))
        replicates = [
            1 - float(correct[index].mean())
            for index in bootstrap_indices(len(correct), scoring.bootstrap_rounds, BOOTSTRAP_SEED)
        ]
        accuracy = float(correct.mean())
        low, high = centred_interval(1 - accuracy, replicates, scoring.confidence)
        per_class = {
            str(c): float(correct[guidance.labels(0, len(images)) == c].mean()) for c in sorted(set(guidance.chosen()))
        }
        return (
            1 - accuracy,
            replicates,
            {"accuracy": accuracy, "accuracy_interval": [1 - high, 1 - low], "per_class": per_class},
        )

    def level(self, level: Level, measures: list[str] | None = None, *, force: bool = False) -> list[dict]:
        return [self.measure(level, m, force=force) for m in (measures or self.config.eval.measures)]


def evaluate_levels(
    run: str | Path,
    config: EvalConfig | None = None,
    levels: list[int] | None = None,
    *,
    progress: bool = True,
    log=print,
    extractor: InceptionFeatures | None = None,
    force: bool = False,
) -> list[dict]:
    """Measure the given levels (default: the last finished one) with every configured measure.

    Returns the records, level by level.  A measure already stored with the same protocol is read
    back, not recomputed, unless ``force`` (which replaces those records only).
    """
    config = config or EvalConfig()
    run = Run.open(run)
    if config.sampling.schedule:
        chosen = [StagedLevel(run, config.sampling.schedule)]
    else:
        chosen = [run.last_level()] if levels is None else [run.level(i).require_finished() for i in levels]
    evaluator = Evaluator(config, progress=progress, log=log, extractor=extractor)
    records = [record for level in chosen for record in evaluator.level(level, force=force)]
    track_evaluations(config.runtime.log_to, run, records)
    return records


def track_evaluations(kind: str, run: Run, records: list[dict]) -> None:
    """Evaluation results in the run's tracker, one series per measure and protocol, stepped by level."""
    tracking = Tracking(kind, run.root, "evaluation")
    for record in records:
        if record.get("schedule"):
            continue  # a schedule is no level: its records stay in the run folder only
        tag = f"eval/{record['measure']}/{record['key']}"
        values = {tag: record["value"], f"{tag}/low": record["interval"][0], f"{tag}/high": record["interval"][1]}
        if record["measure"] == "inception":
            values[f"{tag}/kid"] = record["kid_mean"]
        tracking.scalars(values, record["level"])
    tracking.close()


def loss_validation(level: Level, count: int = 200, bands: int = 5, seed: int = 0) -> dict[str, float]:
    """The held-out loss of a trained level on: held-out images, as many training images, the held-out
    images blurred, and uniform noise (fixed noise per image, as the measure uses).

    A measure fit to rank models must order these real < blurred < noise, and a model that does not
    overfit scores held-out and training images alike."""
    data = level.run.config.data
    model, diffusion = level_network(level, "ema"), level.run.config.diffusion

    def images(split: str) -> torch.Tensor:
        return reference_images(
            load_dataset(
                data.dataset,
                data.data_dir,
                split=split,
                image_size=input_size(level.run.config),
                channels=data.channels,
                mirror=data.mirror,
            ).images,
            count,
            seed=1,
        )

    def loss(batch: torch.Tensor) -> float:
        return float(denoising_loss_by_band(model, diffusion, to_model_range(batch), bands=bands, seed=seed).mean())

    held_out = images("test")
    return {
        "n": len(held_out),
        "bands": bands,
        "real": loss(held_out),
        "training": loss(images("train")),
        "blurred": loss(box_blur(held_out)),
        "noise": loss(uniform_noise(held_out, seed)),
    }


def describe(record: dict, run: Path | str = "") -> str:
    measure = MEASURES[record["measure"]]
    low, high = record["interval"]
    where = f"schedule {record['schedule']}" if record.get("schedule") else f"level {record['level']}"
    text = f"{run} {where}: {measure.label} {record['value']:.4g} [{low:.4g}, {high:.4g}]"
    if record["measure"] == "class-accuracy":
        acc_low, acc_high = record["accuracy_interval"]
        text = f"{run} {where}: class accuracy {record['accuracy']:.4g} [{acc_low:.4g}, {acc_high:.4g}]"
    if record["measure"] == "inception":
        if record.get("biased_warning"):
            text += " (strongly biased: N < 2048, read KID)"
        text += f", KID {record['kid_mean']:.4f} ± {record['kid_std']:.4f}"
    return f"{text} ({record['confidence']:.0%} interval; {record['label']}; {record['wall_time_s']:.0f} s)"


__all__ = [
    "BOOTSTRAP_SEED",
    "FEATURE_DIM",
    "MEASURES",
    "Evaluator",
    "describe",
    "load_samples",
    "measure_key",
    "protocol_label",
    "sampling_key",
    "sampling_protocol",
]
