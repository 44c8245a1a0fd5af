"""Sampling speed of tickets: dense, unstructured, channel tickets (compacted) and stage schedules.

    python benchmarks/sampling.py [--presets small,ddpm-cifar10] [--batches 1,64] [--repeats 3]
                                  [--sparsities 0.5,0.75,0.875] [--device auto]

For each preset and batch size, every network is timed interleaved in one loop (one call of each
in turn, the median of ``--repeats`` rounds after a warm-up round; ``costs.time_denoisers``), so a
machine that slows down mid-run slows every row alike.  Rows:

* dense: the preset's network;
* unstructured 90 %: the same network with 90 % of its prunable weights zeroed (global magnitude):
  PyTorch's dense kernels do the same work, so the same seconds;
* channel X %: a channel ticket at channel sparsity X (unified), compacted into a smaller network;
* schedule: dense for timesteps 1000..600, the sparsest channel ticket for 600..0 (DDIM 50: 20 dense
  calls, 30 sparse ones).

Columns: seconds per denoiser call and per sample (DDIM 50 steps, and DPM-Solver++ 20 for the
rows that can combine with it), the measured speed-up over dense, and the FLOP ratio: the
physical limit of that speed-up.  The timed networks have random weights: speed does not depend
on the values.  Runs unchanged on CUDA (``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy

import torch

from ddpm_lottery.config import ModelConfig
from ddpm_lottery.lottery.levels import apply_masks
from ddpm_lottery.models.networks import PRESETS, build_model
from ddpm_lottery.pruning.channels.compact import compact
from ddpm_lottery.pruning.channels.groups import channel_groups
from ddpm_lottery.pruning.channels.masks import full_channel_masks, install_kept_norms, parameter_masks
from ddpm_lottery.pruning.channels.rounds import prune_channels
from ddpm_lottery.pruning.costs import layer_flops, ticket_flops, time_denoisers
from ddpm_lottery.pruning.masks import full_masks
from ddpm_lottery.pruning.modules import module_map
from ddpm_lottery.pruning.strategies import PruneSettings, prune_round
from ddpm_lottery.utils.launch import resolve_device


def networks_of(preset: str, sparsities: list[float]) -> tuple[dict, dict]:
    """{row: network} and {row: FLOPs per call (effective for the unstructured ticket)}."""
    channels = PRESETS[preset].get("in_channels") or 1
    dense = build_model(ModelConfig(preset=preset), channels).eval()
    nets, flops = {"dense": dense}, {"dense": layer_flops(dense)[0]}
    mmap = module_map(dense)
    masks, _ = prune_round(
        "global", mmap, full_masks(dense, mmap.tensor_names), dense.state_dict(), PruneSettings(prune_ratio=0.9)
    )
    unstructured = copy.deepcopy(dense)
    unstructured.load_state_dict(apply_masks(dense.state_dict(), masks))
    nets["unstructured 90 %"] = unstructured
    flops["unstructured 90 %"] = ticket_flops(unstructured, masks, mmap)["effective_flops"]
    groups = channel_groups(dense)  # residual streams included: the most speed
    shapes = {n: tuple(p.shape) for n, p in dense.named_parameters()}
    for target in sparsities:
        chosen, _ = prune_channels(
            "unified",
            groups,
            full_channel_masks(groups),
            dense.state_dict(),
            PruneSettings(prune_ratio=0.5),
            target=target,
        )
        masked = copy.deepcopy(dense)
        masked.load_state_dict(apply_masks(dense.state_dict(), parameter_masks(groups, chosen, shapes)))
        install_kept_norms(masked, groups, chosen)
        name = f"channel {target:.1%}"
        nets[name] = compact(masked, groups, chosen)
        flops[name] = layer_flops(nets[name])[0]
    return nets, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,ddpm-cifar10")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsities", default="0.5,0.75,0.875", help="channel sparsities of the channel tickets")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    for preset in args.presets.split(","):
        nets, flops = networks_of(preset, sparsities)
        sparsest = f"channel {max(sparsities):.1%}"
        for batch in (int(b) for b in args.batches.split(",")):
            times = time_denoisers(nets, batch, args.repeats, device)
            # DDIM 50 steps over 1000..0: 20 calls at t >= 600, 30 below
            rows = {name: (times[name], flops[name], 50) for name in nets}
            schedule_s = (20 * times["dense"] + 30 * times[sparsest]) / 50
            schedule_f = (20 * flops["dense"] + 30 * flops[sparsest]) / 50
            rows[f"schedule dense 1000:600, {sparsest} 600:0"] = (schedule_s, schedule_f, 50)
            dense_s, dense_f = times["dense"], flops["dense"]
            print(f"\n{preset}, batch {batch} ({device}; median of {args.repeats} interleaved calls)")
            print(
                f"{'network':<44}{'parameters':>12}{'s/call':>10}{'s/sample DDIM50':>17}{'s/sample DPM20':>16}"
                f"{'speed-up':>10}{'FLOP ratio':>12}"
            )
            for name, (per_call, per_call_flops, _) in rows.items():
                per_sample = 50 * per_call / batch
                dpm = f"{20 * per_call / batch:>16.4g}" if not name.startswith("schedule") else f"{'–':>16}"
                params = f"{sum(p.numel() for p in nets[name].parameters()):>12,}" if name in nets else f"{'–':>12}"
                print(
                    f"{name:<44}{params}{per_call:>10.4g}{per_sample:>17.4g}{dpm}{dense_s / per_call:>9.2f}×"
                    f"{dense_f / per_call_flops:>11.2f}×"
                )
            print(
                f"{'dense DDPM 1000 (reference)':<44}{dense_s:>10.4g}{1000 * dense_s / batch:>17.4g}"
                f"  ← {sparsest} with DPM-Solver++ 20 is "
                f"{(1000 * dense_s) / (20 * times[sparsest]):.0f}× faster per sample"
            )


if __name__ == "__main__":
    main()
