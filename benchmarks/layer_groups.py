"""How much each layer group of a trained DiT holds, and what pruning it alone costs: the measurement behind
the default of ``--layer-groups``.

    python benchmarks/layer_groups.py RUN [--level 0] [--sparsities 0.5,0.875,0.96875] [--images 500]

For a trained DiT run's level (its EMA weights) it prints, per layer group of the family (the patch
embedding, the blocks' timestep MLPs, their adaLN-Zero modulations, attention, MLP, the output layers):

* its share of the prunable weights;
* the held-out loss after magnitude-pruning that group alone, layer by layer, to each sparsity, with
  no retraining; and the loss's rise over the unpruned network's, with a 95 % bootstrap interval over
  images (both networks see the same noisy inputs, so the difference is free of sampling noise).

A group whose pruning costs little for its share of the weights is one IMP should be free to prune; one
that costs much for a small share is a candidate to leave dense.  One-shot pruning without retraining
is a sensitivity probe, not a ticket: IMP retrains between rounds.  The held-out images are the run's
dataset's test split (seeded choice, as ``evaluate``'s loss measure), timesteps in 10 bands.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from ddpm_lottery.data.images import to_model_range
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.lottery.networks import level_network
from ddpm_lottery.measures.inception import reference_images
from ddpm_lottery.measures.stats import centred_interval
from ddpm_lottery.models.diffusion import denoising_loss_by_band
from ddpm_lottery.models.families import family_of
from ddpm_lottery.runs.run import Run


def magnitude_pruned(model: torch.nn.Module, group: str, sparsity: float) -> torch.nn.Module:
    """A copy of ``model`` whose layers in ``group`` keep their largest (1 - sparsity) weights each."""
    pruned = copy.deepcopy(model)
    family = family_of(pruned)
    with torch.no_grad():
        for name, module in pruned.named_modules():
            if family.is_prunable(module) and family.layer_group(name) == group:
                weight = module.weight
                drop = round(sparsity * weight.numel())
                if drop:
                    cut = weight.abs().flatten().kthvalue(drop).values
                    weight.mul_(weight.abs() > cut)
    return pruned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a trained DiT run folder (train or find-ticket)")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--sparsities", default="0.5,0.875,0.96875")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args(argv)
    run = Run.open(args.run)
    model = level_network(run.level(args.level), "ema").eval()
    family = family_of(model)
    if not family.layer_groups:
        print(f"layer_groups.py: {args.run} is not a DiT (its family has no layer groups)", file=sys.stderr)
        return 2
    network = run.network_config()
    held = load_dataset(
        run.config.data.dataset,
        run.config.data.data_dir,
        split="test",
        image_size=network["sample_size"],
        channels=network["in_channels"],
    )
    clean = to_model_range(reference_images(held.images, args.images, seed=1))
    labels = None
    if family.num_classes(model.config):  # a class-conditional DiT predicts each image given its own label
        labels = reference_images(held.labels, args.images, seed=1)

    def losses(network_: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return denoising_loss_by_band(network_, run.config.diffusion, clean, labels=labels).mean(dim=1)

    base = losses(model)
    sizes: dict[str, int] = {}
    for name, module in model.named_modules():
        if family.is_prunable(module):
            group = family.layer_group(name)
            sizes[group] = sizes.get(group, 0) + module.weight.numel()
    total = sum(sizes.values())
    print(
        f"# layer groups of {args.run} level {args.level} (EMA weights): held-out loss {base.mean():.5f} on "
        f"{len(clean)} test images, 10 timestep bands; one-shot magnitude pruning of one group, no retraining\n"
        f"# python benchmarks/layer_groups.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    sparsities = [float(s) for s in args.sparsities.split(",")]
    header = "| group | prunable weights | share |" + "".join(f" loss rise at {s:.2%} |" for s in sparsities)
    print(header, "|---|---|---|" + "---|" * len(sparsities), sep="\n", flush=True)
    generator = torch.Generator().manual_seed(0)
    for group in family.layer_groups:
        cells = []
        for sparsity in sparsities:
            rise = losses(magnitude_pruned(model, group, sparsity)) - base
            draws = [
                float(rise[torch.randint(0, len(rise), (len(rise),), generator=generator)].mean()) for _ in range(200)
            ]
            low, high = centred_interval(float(rise.mean()), draws, 0.95)
            cells.append(f" {rise.mean():+.5f} [{low:+.5f}, {high:+.5f}] |")
        print(f"| {group} | {sizes.get(group, 0):,} | {sizes.get(group, 0) / total:.1%} |" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
