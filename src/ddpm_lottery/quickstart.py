"""The quickstart: the paper's whole study at CPU scale on the embedded digits, ending in a report.

1. ``varying`` tickets (Algorithm 1) from a dense model trained with data seed 0 (level 0);
2. ``unified`` tickets from the same dense model (level 0 and theta_tau are reused);
3. a second ``varying`` ticket of the same model (same theta_0) with data seed 1, for CKA;
4. FID/KID of every level, FLOPs/parameters/storage, CKA between the two varying tickets;
5. ``OUT/report.html`` (+ ``report.md``).

Everything finished is reused when it runs again.  Its defaults are sized for about 10-15 minutes on
two CPU cores, far below the paper's budgets: few steps per level (the digits are rough), a
large per-round ratio (so a few rounds reach high sparsity), and FID on a few hundred images
(strongly biased: read it only against other levels at the same N, beside KID).
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from .cka import compare_runs
from .config import CkaConfig, EvalConfig, LotteryConfig, QuickstartConfig, command_line
from .costs import stored_costs
from .evaluation import evaluate
from .lottery import find_ticket
from .report import build_report
from .runs import Run


def _ticket_config(settings: QuickstartConfig, strategy: str, seed_data: int) -> LotteryConfig:
    config = LotteryConfig()
    config.model.preset = settings.preset
    config.data.dataset = settings.dataset
    config.data.data_dir = settings.data_dir
    config.train.steps = settings.steps_per_level
    config.train.batch_size = settings.batch_size
    config.train.seed_data = seed_data
    config.runtime.device = settings.device
    config.train.checkpoint_every = 100
    config.prune.strategy = strategy
    config.prune.prune_ratio = settings.prune_ratio
    config.prune.target_sparsity = settings.target
    config.prune.max_rounds = settings.rounds
    return config


def quickstart(out: str | Path = "runs/quickstart", settings: QuickstartConfig | None = None, *,
               progress: bool = True, log=print) -> Path:
    settings = settings or QuickstartConfig()
    out = Path(out)
    started = time.perf_counter()
    varying = out / "varying-seed0"
    unified = out / "unified-seed0"
    second = out / "varying-seed1"

    log(f"[1/5] varying tickets (Algorithm 1), {settings.rounds} rounds of p={settings.prune_ratio} to "
        f"{settings.target:.1%}, {settings.steps_per_level} steps per level")
    find_ticket(_ticket_config(settings, "varying", 0), varying, progress=progress, log=log)
    log("[2/5] unified tickets from the same dense model")
    config = _ticket_config(settings, "unified", 0)
    config.prune.dense_from = str(varying)
    find_ticket(config, unified, progress=progress, log=log)
    log("[3/5] a second varying ticket of the same model (same initial weights, data seed 1)")
    find_ticket(_ticket_config(settings, "varying", 1), second, progress=progress, log=log)

    eval_config = EvalConfig(num_samples=settings.num_samples, sampler="ddim", sampling_steps=settings.sampling_steps,
                             reference_samples=settings.reference_samples, kid_subset_size=settings.kid_subset_size,
                             device=settings.device)
    log(f"[4/5] FID/KID of every level: N={settings.num_samples} generated vs {settings.reference_samples} training "
        f"images, DDIM {settings.sampling_steps} steps (the Inception runs at a few images/s on a CPU)")
    for path in (varying, unified, second):
        run = Run.open(path)
        evaluate(path, eval_config, run.finished_levels(), progress=progress, log=log)
        for index in run.finished_levels():
            stored_costs(run.level(index))
    first, other = Run.open(varying), Run.open(second)
    cka = first.cka_folder(other, first.last_level().index)
    if not cka.summary.exists():
        compare_runs(varying, second, first.last_level().index, CkaConfig(), out=cka.dir, log=log)

    log("[5/5] report")
    command = command_line("ddpm-lottery quickstart", settings, ["--out", str(out)])
    intro = (
        f"<p>The study of <i>Successfully Applying Lottery Ticket Hypothesis to Diffusion Model</i> (arXiv 2310.18823) "
        f"at CPU scale: preset <b>{html.escape(settings.preset)}</b> on <b>{html.escape(settings.dataset)}</b>, "
        f"{settings.steps_per_level} training steps per level (batch {settings.batch_size}), iterative magnitude "
        f"pruning with rewinding to 5 % of level 0, <b>{settings.rounds} rounds of p = {settings.prune_ratio}</b> "
        f"(the paper prunes 20 % per round for 25 rounds; a larger ratio reaches {settings.target:.1%} in a few "
        f"rounds here). Compare strategies at equal sparsity.</p>"
        f"<p class=note>Scale: the paper trains 800k steps and measures FID on 50,000 samples. These FIDs use "
        f"N={settings.num_samples} samples against {settings.reference_samples} training images: strongly biased "
        f"(N &lt; 2048), useful only to compare levels measured alike, with KID (unbiased) beside them. "
        f"Scale up with the flags in the command below (e.g. --steps-per-level 2500 --num-samples 2048).</p>")
    report = build_report([varying, unified, second], out / "report.html", cka_dirs=[cka.dir],
                          title="ddpm-lottery quickstart: winning tickets in a DDPM", intro=intro, commands=[command],
                          log=log)
    log(f"quickstart finished in {time.perf_counter() - started:.0f} s")
    return report
