"""How a run folder is laid out: the one place that names its files (the run model is :mod:`ddpm_lottery.runs`).

A run is a folder readable without the code.  A training run is a run with level 0 only; a
ticket search adds a level per pruning round; a control (random re-init, random mask) is a run
of its own under its ticket run's ``branches/``::

    RUN/config.json              kind, layout version, identity (run hash, data fingerprint),
                                 the non-default settings and the full config
    RUN/network.json             the diffusers network config (rebuilds every level's network; _class_name
                                 names a DiTTransformer2DModel, none a UNet2DModel)
    RUN/modules.json             the module map: prunable tensors by block, forward-execution order
    RUN/rewind/weights.safetensors   theta_tau, the weights every pruned level rewinds to
    RUN/summary.json             one row per finished level (sparsity, loss, wall time)
    RUN/commands.log             the commands run in this folder
    RUN/level_XX/                one level (XX = 00 is the dense network):
        mask.safetensors         bit-packed masks, 1 bit per prunable weight
        schedule.json            the ratio each unit planned and the count it removed (pruned levels)
        weights.safetensors      trained weights;  ema.safetensors: their EMA (what sampling uses)
        metrics.jsonl            step, loss, learning rate, images/s
        metrics.json             sparsities, per-module table, training summary; written last: its
                                 presence marks the level finished
        samples.png              a small DDIM grid (a visual check, not a metric)
        checkpoints/             step_XXXXXXXX.safetensors + .json (with the file's digest), while
                                 the level trains
        eval/samples-<sampling>.npz   the uint8 images one sampling protocol generated (arr_0)
        eval/.samples-<sampling>.parts/   while they are drawn: each finished batch, so a killed
                                 evaluation resumes at the batch it was drawing (same images)
        eval/<measure>-<protocol>.json   one measure (inception, domain, loss): value, interval,
                                 bootstrap resamples and everything that made them
        eval/loss-<protocol>.npz the held-out loss of every image and timestep band
        costs.json               FLOPs, parameters, storage;  sparse.safetensors: the sparse export
        channels.safetensors     channel tickets: the kept channels of every channel group
        compact.safetensors      channel tickets (and `ddpm-lottery compact`): the smaller network, EMA
                                 weights;  compact.json: its layer shapes
    RUN/channel_groups.json      channel tickets: each group's layers and the layer index of each channel
    RUN/schedules/<schedule>/eval/   the evaluations of a stage schedule
    RUN/ranges/<level>-t<LOW>-<HIGH>-<start>-<hash>/   a level fine-tuned on one timestep range (a run)
    RUN/frontier/                frontier.md, frontier.png, frontier.json
    RUN/model_index.json, RUN/unet/, RUN/scheduler/   training runs: a DDPMPipeline view of level 0 (EMA
                                 weights, linked), so DDPMPipeline.from_pretrained(RUN) loads the run
                                 (a DiT's run: RUN/transformer/ and RUN/scheduler/, no pipeline)
    RUN/branches/<control>-<hash>/   controls, laid out as runs
    RUN/cka/<other>-levelXX/     CKA between this run and another: cka.csv, cka.json, figure1.png

Every write is atomic (see :mod:`ddpm_lottery.utils.files`); a folder is used by one process at a time (``RUN/.lock``).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

LAYOUT_VERSION = 2
#: What a run folder holds: a training run, a ticket search, one of the controls, or a range fine-tune.
RunKind = Literal["train", "lottery", "control-reinit", "control-random", "control-refill", "range"]
KINDS: tuple[str, ...] = get_args(RunKind)
LEVEL_PATTERN = re.compile(r"^level_(\d{2,})$")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")


def level_name(index: int) -> str:
    return f"level_{index:02d}"
