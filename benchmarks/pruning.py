"""Cost of the lottery machinery: one round's masks, rewinding, and masked training steps.

    python benchmarks/pruning.py [--presets small,ddpm-cifar10] [--repeats 5]

For each preset:

* mask round: seconds to compute one pruning round (unified, global, varying) from the
  magnitudes of the weights, starting from a 90 %-sparse mask (the late rounds are the largest
  sorts: all survivors of a module are ranked together);
* rewind: seconds to build theta_tau * m and load it into the trainer (fresh Adam, EMA reset);
* masked step: a training step with the 90 %-sparse mask active versus the same step unmasked
  (the goal is under 3 % overhead); step-to-step noise on a shared machine is a few %, so the
  cost of the masking kernel alone (one fused multiply of all gradients) is printed too.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import interleaved_minimum, random_data_trainer, seconds

from ddpm_lottery.lottery.levels import apply_masks
from ddpm_lottery.pruning.masks import full_masks
from ddpm_lottery.pruning.modules import module_map
from ddpm_lottery.pruning.strategies import PruneSettings, prune_round
from ddpm_lottery.training.trainer import MaskedTraining, StepHooks


def best_of(fn, repeats: int) -> float:
    return min(seconds(fn) for _ in range(repeats))


def bench(preset: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        trainer = random_data_trainer(preset, workdir)
        mmap = module_map(trainer.model)
        weights = trainer.weights()
        dense = full_masks(trainer.model, mmap.tensor_names)
        sparse90, _ = prune_round("global", mmap, dense, weights, PruneSettings(prune_ratio=0.9))
        rounds = {}
        for strategy in ("unified", "global", "varying"):
            rounds[strategy] = best_of(
                lambda s=strategy: prune_round(s, mmap, sparse90, weights, PruneSettings()), max(2, repeats // 2)
            )
        rounds["varying from dense"] = best_of(
            lambda: prune_round("varying", mmap, dense, weights, PruneSettings()), max(2, repeats // 2)
        )
        rewind = best_of(lambda: trainer.load_weights(apply_masks(weights, sparse90)), repeats)

        masked = MaskedTraining(trainer.model, sparse90)
        plain = StepHooks()
        counter = iter(range(10**9))

        def step_with(hooks):
            trainer.hooks = hooks
            trainer.train_step(next(counter))

        plain_s, masked_s = interleaved_minimum(lambda: step_with(plain), lambda: step_with(masked), repeats)
        # the masking kernel alone, on real gradients
        mask_op = best_of(lambda: masked.after_backward(trainer.parameters), repeats)
    return {
        "preset": preset,
        "mask_op": mask_op,
        "params": sum(m.size for m in mmap.modules),
        "modules": len(mmap.modules),
        "rounds": rounds,
        "rewind": rewind,
        "plain": plain_s,
        "masked": masked_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,ddpm-cifar10")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; masks at 90 % sparsity")
    print(
        f"{'preset':<14}{'prunable':>12}{'modules':>8}{'unified s':>10}{'global s':>9}{'varying s':>10}"
        f"{'vary dense s':>13}{'rewind s':>9}{'step s':>8}{'masked s':>9}{'overhead':>9}{'mask op s':>10}"
        f"{'op/step':>8}"
    )
    for preset in args.presets.split(","):
        r = bench(preset, args.repeats)
        rounds = r["rounds"]
        print(
            f"{r['preset']:<14}{r['params']:>12,}{r['modules']:>8}{rounds['unified']:>10.3f}{rounds['global']:>9.3f}"
            f"{rounds['varying']:>10.3f}{rounds['varying from dense']:>13.3f}{r['rewind']:>9.3f}"
            f"{r['plain']:>8.3f}{r['masked']:>9.3f}{r['masked'] / r['plain'] - 1:>+9.1%}{r['mask_op']:>10.4f}"
            f"{r['mask_op'] / r['plain']:>8.2%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
