"""Training-step time, sampling throughput, and the training loop's overhead.

    python benchmarks/train_step.py [--presets tiny,small,ddpm-mnist,ddpm-cifar10] [--repeats 9]

For each preset it times, on the same network, batch and device:

* bare:  forward + MSE loss + backward + grad clip + Adam step + EMA on a batch prepared in
         advance (the work any DDPM trainer must do);
* loop:  ``Trainer.train_step``: the same plus everything the loop adds (data indexing,
         per-step seeded noise/timesteps/flips, the LR schedule, the mask hooks);
* sample: a no-grad denoiser call, reported as images per second.

It prints a table; the overhead column is loop / bare - 1 (goal: under 5 %).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import BATCH, interleaved_minimum, random_data_trainer, seconds

from ddpm_lottery.models.diffusion import training_loss


def bench(preset: str, repeats: int, workdir: str) -> dict:
    trainer = random_data_trainer(preset, workdir, images=512)
    clean, noise, timesteps = trainer.batch(0)

    def bare():
        loss = training_loss(trainer.model, trainer.scheduler, clean, noise, timesteps)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters, 1.0, foreach=True)
        trainer.optimizer.step()
        trainer.ema.step(trainer.parameters)

    counter = iter(range(10**9))

    def loop():
        trainer.train_step(next(counter))

    bare_s, loop_s = interleaved_minimum(bare, loop, repeats)
    model = trainer.model.eval()
    x = torch.randn(BATCH[preset], model.config.in_channels, model.config.sample_size, model.config.sample_size)
    t = torch.full((BATCH[preset],), 500)

    @torch.no_grad()
    def call():
        model(x, t)

    call_s = min(seconds(call) for _ in range(repeats))
    params = sum(p.numel() for p in trainer.parameters)
    return {
        "preset": preset,
        "params": params,
        "batch": BATCH[preset],
        "bare_s": bare_s,
        "loop_s": loop_s,
        "overhead": loop_s / bare_s - 1,
        "images_per_s_call": BATCH[preset] / call_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,ddpm-mnist,ddpm-cifar10")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(
        f"{'preset':<14}{'params':>12}{'batch':>7}{'bare step s':>13}{'loop step s':>13}{'overhead':>10}"
        f"{'img/s per call':>16}"
    )
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            r = bench(preset, args.repeats, workdir)
        print(
            f"{r['preset']:<14}{r['params']:>12,}{r['batch']:>7}{r['bare_s']:>13.3f}{r['loop_s']:>13.3f}"
            f"{r['overhead']:>+10.1%}{r['images_per_s_call']:>16.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
