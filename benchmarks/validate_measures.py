"""Validation of the two CPU-scale quality measures on the embedded digits: what each says of images
whose quality is known (held-out real digits, the floor of as many training digits, the same digits
blurred with a 5x5 box, uniform noise).

    python benchmarks/validate_measures.py [--run results/cpu-digits/runs/unified-seed0] [--loss-n 200]

Domain FD: the 500 held-out digits against the 4,500 training digits, on the features of the domain
classifier the evaluations use (trained here from its fixed seed, or read from its cache).  Held-out
loss: the dense level 0 of ``--run`` (the reproduction study's dense model by default), ``--loss-n``
images, 5 timestep bands, fixed noise.  The tests assert the orderings these tables show
(tests/test_domain.py, tests/test_evaluation.py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ddpm_lottery.data.images import data_fingerprint
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.measures.domain import domain_net, domain_validation
from ddpm_lottery.measures.evaluate import loss_validation
from ddpm_lottery.runs.run import Run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        default=str(ROOT / "results" / "cpu-digits" / "runs" / "unified-seed0"),
        help="a run whose dense level 0 the held-out loss is validated on",
    )
    parser.add_argument("--loss-n", type=int, default=200, help="images per row of the loss table")
    args = parser.parse_args()

    train, held_out = load_dataset("embedded"), load_dataset("embedded", split="test")
    with tempfile.TemporaryDirectory() as cache:
        net, _ = domain_net(train, data_fingerprint(train, "train"), cache_dir=Path(cache), log=lambda *_: None)
        domain = domain_validation(net, train.images, held_out.images, held_out.labels)
    print(
        f"domain FD, N = {domain['n']} against {domain['reference']} training digits "
        f"(classifier held-out accuracy {domain['accuracy']:.1%}); lower is better"
    )
    print(f"{'images':<34}{'domain FD':>12}")
    for key, label in (
        ("real", "held-out digits"),
        ("floor", f"{domain['n']} training digits (floor)"),
        ("blurred", "held-out digits, 5x5 box blur"),
        ("noise", "uniform noise"),
    ):
        print(f"{label:<34}{domain[key]:>12.3g}")

    run = Path(args.run)
    if not Run.is_run(run) or not Run.open(run).level(0).finished:
        print(f"\n(no finished level 0 in {run}: the held-out loss table needs a trained dense model)")
        return
    loss = loss_validation(Run.open(run).level(0), count=args.loss_n, bands=5)
    print(
        f"\nheld-out denoising loss of {run} level 0 (EMA), N = {loss['n']}, {loss['bands']} timestep bands, "
        "fixed noise; lower is better"
    )
    print(f"{'images':<34}{'loss':>12}")
    for key, label in (
        ("real", "held-out digits"),
        ("training", "training digits"),
        ("blurred", "held-out digits, 5x5 box blur"),
        ("noise", "uniform noise"),
    ):
        print(f"{label:<34}{loss[key]:>12.4f}")


if __name__ == "__main__":
    main()
