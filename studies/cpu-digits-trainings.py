"""The trainings of the CPU reproduction study on the embedded digits, until `ddpm-lottery study` runs it.

    python studies/cpu-digits-trainings.py results/cpu-digits/runs 0,1,2

Per data seed: a dense model and unified tickets (4 levels at 50, 75, 87.5, 93.75 % sparsity, 2,500
steps per level on the tiny preset), their random re-init and random-mask controls, and global,
varying and varying --order reverse searches from the same dense model.  Every run goes into a folder
named by the study and holds the config the study declares, so the study command reuses all of it.
Safe to kill and re-run: finished levels are skipped, killed ones resume; two copies with different
seed orders share the work (a run another copy holds is skipped and picked up on the next pass).
"""
import sys
from pathlib import Path

from ddpm_lottery.config import LotteryConfig
from ddpm_lottery.errors import UserError
from ddpm_lottery.lottery import find_ticket as _find_ticket


def find_ticket(*args, **kwargs):
    try:
        return _find_ticket(*args, **kwargs)
    except UserError as exc:  # another runner holds it, or a control's source is not finished yet
        print(f'skipped: {exc}', flush=True)

ROOT = Path(sys.argv[1])
SEEDS = [int(x) for x in sys.argv[2].split(",")]
SCHEDULE = (0.5, 0.75, 0.875, 0.9375)


def base(seed: int) -> LotteryConfig:
    c = LotteryConfig()
    c.model.preset = "tiny"
    c.train.steps = 2500
    c.train.seed_data = seed
    c.train.checkpoint_every = 250
    c.runtime.device = "cpu"
    c.prune.prune_ratio = 0.5
    c.prune.sparsity_schedule = SCHEDULE
    return c


def log(message):
    print(message, flush=True)


for seed in SEEDS:
    unified = ROOT / f"unified-seed{seed}"
    c = base(seed)
    c.prune.strategy = "unified"
    find_ticket(c, unified, progress=False, log=log)
    for control, fields in (("reinit", {"reinit": True}), ("random", {"strategy": "random"})):
        c = base(seed)
        c.prune.strategy = "unified"
        c.prune.control_of = str(unified)
        c.train.seed_init = 1
        for k, v in fields.items():
            setattr(c.prune, k, v)
        find_ticket(c, ROOT / f"unified-seed{seed}-{control}", progress=False, log=log)
    for name, strategy, order in (("global", "global", "forward"), ("varying", "varying", "forward"),
                                  ("varying-reverse", "varying", "reverse")):
        c = base(seed)
        c.prune.strategy = strategy
        c.prune.order = order
        if strategy == "varying":
            # the paper's profile: p = 0.2, q = 0.01 over the 37 blocks of its CIFAR-10 U-Net make the last
            # block's ratio 2.8x the first's; on tiny's 22 blocks that is q = 0.0857 p
            c.prune.ratio_increment = 0.0429
        c.prune.dense_from = str(unified)
        find_ticket(c, ROOT / f"{name}-seed{seed}", progress=False, log=log)
log("all trainings finished")
