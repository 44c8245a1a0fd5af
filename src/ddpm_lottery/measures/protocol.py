"""What decides a measured figure, named: the sampling protocol, the keys records are stored under, and their labels."""

from __future__ import annotations

import copy
import hashlib
import json

from ddpm_lottery.config import EvalConfig
from ddpm_lottery.lottery.stages import normal_schedule_text
from ddpm_lottery.models.conditioning import guidance_for
from ddpm_lottery.models.diffusion import sampling_steps, unclipped


def sampling_protocol(config: EvalConfig, num_classes: int | None = None) -> dict:
    """Everything that decides the generated images (and nothing that does not, such as the device), of a
    network of ``num_classes`` classes (None: unconditional, whose protocol names no guidance)."""
    sampling = config.sampling
    guidance = guidance_for(sampling, num_classes)
    spec = {
        "sampler": sampling.sampler,
        "steps": sampling_steps(sampling),
        "eta": sampling.eta if sampling.sampler == "ddim" else None,
        "num_samples": config.eval.num_samples,
        "seed": sampling.sample_seed,
        "weights": sampling.weights,
    }
    if unclipped(sampling):  # only then, as for schedules below
        spec["clip_sample"] = False
    if sampling.schedule:  # only then: the keys of protocols without a schedule stay what they were
        spec["schedule"] = normal_schedule_text(sampling.schedule)
    if guidance is not None:  # likewise: unconditional models keep their keys
        spec.update(guidance.protocol())
    return spec


def for_run(config: EvalConfig, num_classes: int | None) -> EvalConfig:
    """A study's evaluation config as it applies to one of its runs: its guidance settings (study-wide, for
    its class-conditional runs) left out of an unconditional run's, which ``evaluate`` would refuse them."""
    if num_classes is not None or (config.sampling.guidance_scale is None and not config.sampling.classes):
        return config
    plain = copy.deepcopy(config)
    plain.sampling.guidance_scale, plain.sampling.classes = None, ()
    return plain


def _digest(spec: dict, length: int = 10) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:length]


def sampling_key(spec: dict) -> str:
    """A readable name of a sampling protocol and a digest of all of it."""
    return (
        f"samples-{spec['sampler']}-{spec['steps']}steps-n{spec['num_samples']}-seed{spec['seed']}-"
        f"{spec['weights']}-{_digest(spec, 6)}"
    )


def measure_key(measure: str, spec: dict) -> str:
    """A readable name of one measure's protocol and a digest of all of it."""
    sampled = spec.get("sampling")
    middle = (
        sampling_key(sampled).removeprefix("samples-")
        if sampled
        else (
            f"{spec['heldout']['split']}-n{spec['heldout']['count']}-{spec['bands']}bands-seed{spec['seed']}-"
            f"{spec['weights']}"
        )
    )
    return f"{measure}-{middle}-{_digest(spec)}"


def protocol_label(record: dict) -> str:
    """How a figure was measured, in one phrase."""
    spec = record["protocol"]
    bootstrap = f"{spec['bootstrap_rounds']} bootstrap resamples"
    if record["measure"] == "loss":
        held = spec["heldout"]
        given = ", given their classes" if held.get("labels") else ""
        return (
            f"held-out loss on {held['count']} {held['dataset']} {held['split']} images{given}, {spec['bands']} timestep "
            f"bands, noise seed {spec['seed']}, {spec['weights']} weights, {bootstrap}"
        )
    sampled, ref = spec["sampling"], spec.get("reference")
    eta = f", eta {sampled['eta']:g}" if sampled.get("eta") else ""
    eta += ", x0 unclipped" if sampled.get("clip_sample") is False else ""
    eta += f", schedule {sampled['schedule']}" if sampled.get("schedule") else ""
    if "guidance_scale" in sampled:
        classes = sampled["classes"]
        which = "balanced classes" if classes == "balanced" else f"classes {','.join(map(str, classes))}"
        eta += f", guidance {sampled['guidance_scale']:g}, {which}"
    # class accuracy compares each image with the class it was asked for, not with reference images
    against = f"vs {ref['count']} {ref['dataset']} {ref['split']} images" if ref else "against the requested classes"
    return (
        f"N={sampled['num_samples']} {against}, "
        f"{sampled['sampler']} {sampled['steps']} steps{eta}, seed {sampled['seed']}, {sampled['weights']} weights, "
        f"{bootstrap}"
    )
