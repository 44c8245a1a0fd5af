"""A run's levels as networks: the network of a run, of a level, and what a level's masks are.

The run model (:mod:`ddpm_lottery.runs`) knows where a level's files are; this module rebuilds
networks from them: the run's ``network.json`` gives the architecture, the level's weights fill it,
and a channel ticket gets the group norms over its surviving channels that it trained with.
"""

from __future__ import annotations

import contextlib

import torch

from ddpm_lottery.models.families import family_of, from_network_config
from ddpm_lottery.models.networks import seeded
from ddpm_lottery.pruning.channels.compact import (
    compact,
    compaction_error,
    load_compact,
    save_compact,
)
from ddpm_lottery.pruning.channels.groups import channel_groups, load_groups
from ddpm_lottery.pruning.channels.masks import install_kept_norms, load_channel_masks
from ddpm_lottery.pruning.channels.norms import norm_shapes
from ddpm_lottery.pruning.channels.unstructured import emptied_channels
from ddpm_lottery.pruning.costs import layer_flops
from ddpm_lottery.pruning.masks import load_masks
from ddpm_lottery.runs.level import Level
from ddpm_lottery.runs.run import Run
from ddpm_lottery.utils.errors import UserError


def run_network(run: Run, seed: int | None = None) -> torch.nn.Module:
    """The run's network, freshly initialised by its family (with ``seed``: the initial weights of --seed-init
    ``seed``)."""
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        return from_network_config(run.network_config())


def require_channel_tickets(model: torch.nn.Module) -> None:
    """Channel groups are traced for the U-Net's resnets, attentions and time embedding only."""
    family = family_of(model)
    if not family.channel_tickets:
        raise UserError(
            f"channel tickets and compaction prune a U-Net's channels; a {family.class_name} has none "
            "that this tool can remove yet (use --structure weight)"
        )


def run_channel_groups(run: Run, model=None):
    """The channel groups a channel ticket of this run prunes (stored with the run; traced if missing)."""
    if run.channel_groups_path.exists():
        return load_groups(run.channel_groups_path)
    prune = getattr(run.config, "prune", None)
    return channel_groups(
        model if model is not None else run_network(run),
        prune.include if prune else (),
        prune.exclude if prune else (),
        prune.channel_scope if prune else "all",
    )


def level_masks(level: Level):
    """The level's masks (True = the weight survives)."""
    return load_masks(level.mask_path, fix=f"delete {level.dir} and re-run the command to recompute the level")


def level_channel_masks(level: Level):
    """A channel ticket's kept channels per group; None for a weight ticket."""
    return load_channel_masks(level.channels_path) if level.channels_path.exists() else None


def level_network(level: Level, which: str = "ema") -> torch.nn.Module:
    """The level's network with its weights loaded (its family's diffusers class on the CPU, eval mode).

    A channel ticket's network normalises over its surviving channels only, exactly as it trained
    (and as its compacted network computes).  A stage schedule (:class:`~ddpm_lottery.lottery.stages.StagedLevel`)
    stands where a level does and builds its own network, one per stage."""
    if hasattr(level, "network"):  # a stage schedule builds its own network
        return level.network(which)
    model = run_network(level.run)
    state = level.state(which)
    if set(dict(model.named_parameters())) - set(state):
        raise UserError(
            f"the weights of {level.label()} do not match its network; delete {level.dir} and re-run "
            "the command to recompute the level"
        )
    model.load_state_dict(state, strict=False)
    if level.channels_path.exists():
        groups = run_channel_groups(level.run, model)
        install_kept_norms(model, groups, load_channel_masks(level.channels_path, groups))
    return model.eval()


def level_compact_network(level: Level):
    """The compacted network of a channel ticket (EMA weights), rebuilt without its masks."""
    if not level.compact_path.exists():
        raise UserError(
            f"{level.label()} has no compacted network (only channel tickets have one; "
            "`ddpm-lottery compact` writes it)"
        )
    return load_compact(level.compact_spec_path, level.compact_path)


def compact_level(level) -> dict:
    """Write a level's compacted network (EMA weights) beside it and say what it removed.

    A channel ticket compacts its channel masks; any other level (an unstructured ticket, a dense
    model) loses exactly the channels its mask has emptied (:func:`emptied_channels`)."""
    level.require_finished()
    run = level.run
    masked = level_network(level, "ema")
    require_channel_tickets(masked)
    groups = run_channel_groups(run, run_network(run))
    channels = level_channel_masks(level)
    if channels is not None:
        small, how = compact(masked, groups, channels), "channel ticket"
    else:
        channels = emptied_channels(groups, level_masks(level), norm_shapes(masked))
        small, how = compact(masked, groups, channels, even=False), "channels the weight mask emptied"
    error = compaction_error(masked, small)
    save_compact(level.compact_spec_path, level.compact_path, small, "ema")
    if level.costs_path.exists():
        level.costs_path.unlink()  # recomputed with the compacted network's FLOPs when next asked
    removed = {g.name: int((~channels[g.name]).sum()) for g in groups if not bool(channels[g.name].all())}
    return {
        "level": level.index,
        "how": how,
        "removed_channels": removed,
        "channels_removed": sum(removed.values()),
        "channels_total": sum(g.channels for g in groups),
        "parameters": sum(p.numel() for p in masked.parameters()),
        "compact_parameters": sum(p.numel() for p in small.parameters()),
        "flops": layer_flops(masked)[0],
        "compact_flops": layer_flops(small)[0],
        "max_abs_difference": error,
    }
