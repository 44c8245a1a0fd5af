"""Tickets out of the tool: a level as a diffusers pipeline folder, with its mask and a card.

``export_level`` writes a standard ``DDPMPipeline`` folder (``model_index.json``, ``unet/``,
``scheduler/``) that ``DDPMPipeline.from_pretrained(DIR)`` loads and samples with: the level's
network with its (EMA by default) weights, pruned weights exactly zero, and the run's forward
process as a ``DDPMScheduler``.  Beside it go ``mask.safetensors`` and ``README.md`` (sparsity,
strategy, measured quality with its protocol, FLOPs, the commands that made it).

A channel ticket's compacted network has per-layer widths that no ``UNet2DModel`` config can
describe, and its norms normalise over surviving channels, which the full-width diffusers network
cannot do.  It exports as ``unet_compact/`` (layer shapes + safetensors) with the scheduler, and
:func:`load_pipeline` rebuilds the ``DDPMPipeline`` around it; ``DDPMPipeline.from_pretrained``
is refused by the absence of ``model_index.json`` rather than loading a different network.
"""

from __future__ import annotations

import os
from pathlib import Path

import diffusers
from diffusers import DDPMPipeline, DDPMScheduler

from ddpm_lottery.lottery.networks import level_masks, level_network
from ddpm_lottery.models.conditioning import run_classes
from ddpm_lottery.models.diffusion import noise_scheduler
from ddpm_lottery.models.families import family_of, family_of_config
from ddpm_lottery.pruning.channels.compact import load_compact
from ddpm_lottery.runs.records import ExportNote, read_record
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError
from ddpm_lottery.utils.files import copy_file, make_dirs, staged_folder, write_json, write_text

CARD_NAME = "README.md"
COMPACT_DIR = "unet_compact"
PIPELINE_NOTE = "ddpm_lottery_pipeline.json"


def _check_destination(out: Path, run: Run, chosen, weights: str, force: bool) -> None:
    here = Path.cwd()
    if out.resolve() in (here, *here.parents):
        # an export replaces its folder whole, and the folder a shell stands in cannot be replaced under it
        raise UserError(
            f"--out {out} is the current folder or one above it; give a folder to create, e.g. --out ./ticket"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a new or empty folder for the pipeline")
    if not out.exists() or not any(out.iterdir()):
        return
    note = out / PIPELINE_NOTE
    if not note.exists():
        raise UserError(f"{out} exists and is not a ddpm-lottery export; give an empty or new --out folder")
    if force:
        return
    earlier = read_record(note, ExportNote, "export description", f"delete {out} or give another --out folder")
    same = earlier["run"] == str(run.root) and earlier["level"] == chosen.index and earlier["weights"] == weights
    if not same:
        what = f"level {earlier['level']} of {earlier['run']} ({earlier['weights']} weights)"
        raise UserError(
            f"{out} already holds an export of {what}; give another --out folder, or pass --force to replace it"
        )


def export_level(
    run_dir: str | Path,
    out: str | Path,
    level: int | None = None,
    weights: str = "ema",
    log=print,
    force: bool = False,
) -> Path:
    """Write level ``level`` (default: the last finished) of a run as a pipeline folder at ``out``.

    An earlier export at ``out`` of the same level and weights is written again; one of anything
    else is finished work, replaced only with ``force``.
    """
    run = Run.open(run_dir)
    chosen = run.pick_level(level)
    out = Path(out)
    _check_destination(out, run, chosen, weights, force)
    scheduler = noise_scheduler(run.config.diffusion)
    compacted = chosen.compact_path.exists() and chosen.channels_path.exists() and weights == "ema"
    if chosen.channels_path.exists() and not compacted:
        raise UserError(
            f"{chosen.label()} is a channel ticket: it exports compacted, with its EMA weights "
            "(drop --weights raw, or run `ddpm-lottery compact` if compact.safetensors is missing)"
        )
    load, loop = "ddpm_lottery.load_pipeline(DIR)", None
    with staged_folder(out) as staging:
        if compacted:
            small = load_compact(chosen.compact_spec_path, chosen.compact_path)  # checks the pair before copying
            make_dirs(staging / COMPACT_DIR)
            copy_file(chosen.compact_spec_path, staging / COMPACT_DIR / chosen.compact_spec_path.name)
            copy_file(chosen.compact_path, staging / COMPACT_DIR / chosen.compact_path.name)
            scheduler.save_pretrained(staging / "scheduler")
            parameters = sum(p.numel() for p in small.parameters())
        else:
            network = level_network(chosen, weights)
            family = family_of(network)
            if chosen.mask_path.exists():
                level_masks(chosen, network)  # must load and fit the network before it is copied out
            # DDPMPipeline passes no class labels: a class-conditional U-Net exports as a DiT does
            pipeline = family.pipeline if not family.num_classes(network.config) else None
            if pipeline == "DDPMPipeline":
                DDPMPipeline(unet=network, scheduler=scheduler).save_pretrained(staging, safe_serialization=True)
            else:  # no diffusers pipeline fits (DiTPipeline needs a VAE): the network and its scheduler
                network.save_pretrained(staging / family.folder, safe_serialization=True)
                scheduler.save_pretrained(staging / "scheduler")
            if pipeline:
                load = f"{pipeline}.from_pretrained(DIR)"
            else:
                load = f"{family.class_name}.from_pretrained(DIR/{family.folder}) and DDPMScheduler.from_pretrained(DIR/scheduler)"
                loop = sampling_loop(family, network)
            parameters = sum(p.numel() for p in network.parameters())
        if chosen.mask_path.exists():
            level_masks(chosen)  # a corrupt, truncated or foreign mask file is refused, never copied
            copy_file(chosen.mask_path, staging / chosen.mask_path.name, "mask file")
        write_json(
            staging / PIPELINE_NOTE,
            {
                "run": str(run.root),
                "level": chosen.index,
                "weights": weights,
                "compacted": compacted,
                "parameters": parameters,
                "compact_files": [chosen.compact_spec_path.name, chosen.compact_path.name] if compacted else None,
                "load": load,
            },
        )
        write_text(staging / CARD_NAME, card(run, chosen, weights, compacted, parameters, loop))
    log(
        f"wrote {out}: level {chosen.index} of {run.root} ({weights} weights"
        + (", compacted" if compacted else "")
        + f"); load it with {load}"
    )
    return out


def sampling_loop(family, network) -> list[str]:
    """Plain-diffusers sampling of an export no pipeline fits (a pixel-space DiT, a class-conditional network):
    the scheduler loop, with classifier-free guidance for a conditional network."""
    config = network.config
    head = [
        "import torch",
        f"from diffusers import DDPMScheduler, {family.class_name}",
        f'net = {family.class_name}.from_pretrained("DIR/{family.folder}").eval()',
        'scheduler = DDPMScheduler.from_pretrained("DIR/scheduler")',
        "scheduler.set_timesteps(1000)",
        f"x = torch.randn(4, {config.in_channels}, {config.sample_size}, {config.sample_size})",
    ]
    classes = family.num_classes(config)
    if not classes:
        return [
            *head,
            "labels = torch.zeros(4, dtype=torch.long)  # class 0 of a 1-class (unconditional) DiT",
            "with torch.no_grad():",
            "    for t in scheduler.timesteps:",
            "        x = scheduler.step(net(x, timestep=t.expand(4), class_labels=labels).sample, t, x).prev_sample",
            "images = (x.clamp(-1, 1) + 1) / 2",
        ]
    return [
        *head,
        f"labels = torch.arange(4) % {classes}  # the classes asked for; {classes} is the null class",
        f"both, s = torch.cat([labels, torch.full_like(labels, {classes})]), 1.5  # guidance scale s",
        "with torch.no_grad():",
        "    for t in scheduler.timesteps:",
        "        cond, uncond = net(torch.cat([x, x]), timestep=t.expand(8), class_labels=both).sample.chunk(2)",
        "        x = scheduler.step(uncond + s * (cond - uncond), t, x).prev_sample",
        "images = (x.clamp(-1, 1) + 1) / 2",
    ]


def card(run, level, weights: str, compacted: bool, parameters: int, loop: list[str] | None = None) -> str:
    """A short model card: what the ticket is, how good, how costly, how it was made."""
    metrics = level.metrics()
    lines = [
        f"# {run.root.name}, level {level.index}",
        "",
        f"A {'dense DDPM' if level.index == 0 else 'lottery ticket'} exported by ddpm-lottery from `{run.root}`.",
        "",
        "| | |",
        "|---|---|",
        f"| strategy | {metrics.get('strategy', 'dense')} |",
        f"| weight sparsity (prunable weights) | {metrics['sparsity']:.4f} |",
    ]
    if "channel_sparsity" in metrics:
        lines.append(f"| channel sparsity | {metrics['channel_sparsity']:.4f} |")
    lines += [f"| parameters in this export | {parameters:,} |", f"| weights | {weights} |"]
    costs = level.costs()
    if costs:
        flops = costs.get("compact", {}).get("flops", costs["effective_flops"])
        lines.append(
            f"| FLOPs per denoiser call | {flops / 1e9:.4f} G ({'executed' if 'compact' in costs else 'effective'}; "
            f"dense {costs['dense_flops'] / 1e9:.4f} G) |"
        )
    lines += ["", "## Measured quality", ""]
    records = [r for r in level.evaluations() if "measure" in r]
    if records:
        for r in records:
            lines.append(
                f"- {r['measure']}: {r['value']:.4g} [{r['interval'][0]:.4g}, {r['interval'][1]:.4g}] "
                f"({r['confidence']:.0%} interval; {r['label']})"
            )
    else:
        lines.append("- not evaluated (`ddpm-lottery evaluate RUN --level k`)")
    lines += ["", "## Loading", "", "```python"]
    if compacted:
        lines += [
            "import ddpm_lottery",
            "pipeline = ddpm_lottery.load_pipeline(DIR)   # a DDPMPipeline with the compacted UNet",
        ]
    elif loop is not None:
        lines += [*loop, "```", ""]
    else:
        lines += ["from diffusers import DDPMPipeline", "pipeline = DDPMPipeline.from_pretrained(DIR)"]
    if loop is None:
        lines += ["images = pipeline(batch_size=4, num_inference_steps=1000).images", "```", ""]
    commands = run.commands().strip()
    if commands:
        lines += ["## Commands that made it", "", "```", commands, "```", ""]
    lines += ["The run's full settings are in its `config.json`."]
    return "\n".join(lines) + "\n"


def load_pipeline(folder: str | Path):
    """A ``DDPMPipeline`` from an export folder (standard or compacted)."""
    folder = Path(folder)
    note = folder / PIPELINE_NOTE
    if not note.exists():
        if (folder / "model_index.json").exists():
            return DDPMPipeline.from_pretrained(folder)
        raise UserError(
            f"{folder} is not a pipeline folder (no model_index.json or {PIPELINE_NOTE}); "
            "write one with `ddpm-lottery export RUN --out DIR`"
        )
    fix = f"export the level again into {folder} with `ddpm-lottery export RUN --out {folder} --force`"
    info = read_record(note, ExportNote, "export description", fix)
    if not info["compacted"]:
        if not (folder / "model_index.json").exists():
            raise UserError(
                f"{folder} holds a network without a diffusers pipeline; load it as its note says: {info['load']}"
            )
        return DDPMPipeline.from_pretrained(folder)
    files = info.get("compact_files")
    if not (isinstance(files, list) and len(files) == 2 and all(isinstance(f, str) for f in files)):
        raise UserError(f"export description {note} does not name its compact network's two files; {fix}")
    spec, weights = files
    unet = load_compact(folder / COMPACT_DIR / spec, folder / COMPACT_DIR / weights)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"))


__all__ = ["card", "export_level", "load_pipeline"]


def write_pipeline_view(run) -> Path:
    """model_index.json, unet/ and scheduler/ beside a run's levels: diffusers loads the run's dense EMA model.

    The weights are a link to level 0's EMA file (a copy where links are not possible), so the view
    costs no space and cannot disagree with the level.
    """
    level = run.level(0).require_finished()
    network = run.network_config()
    family = family_of_config(network)
    unet_dir = make_dirs(run.root / family.folder)
    write_json(unet_dir / "config.json", {**network, "_class_name": family.class_name})
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    if weights.is_symlink() or weights.exists():
        weights.unlink()
    try:
        os.symlink(os.path.relpath(level.weights_path("ema"), unet_dir), weights)
    except OSError:  # a file system without links
        copy_file(level.weights_path("ema"), weights)
    noise_scheduler(run.config.diffusion).save_config(run.root / "scheduler")
    # a DiT view, or a class-conditional one (DDPMPipeline passes no labels): the network and scheduler/ only,
    # which --pretrained RUN reads
    if family.pipeline is None or run_classes(run.config) is not None:
        return run.root
    write_json(
        run.root / "model_index.json",
        {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        },
    )
    return run.root
