"""Start-up time of the command line: `ddpm-lottery --help` and `ddpm-lottery train --help`.

    python benchmarks/startup.py [--repeats 9] [--torch]

Each command runs in a fresh process, wall time from spawn to exit, the median (and the best) of
``--repeats`` rounds after a warm-up round; the commands take turns within each round, so a machine
that slows down mid-run slows every row alike.  ``python -c pass`` is the physical limit: the
interpreter's own start, which no command line can beat; the last column is what the command costs
beyond it.  ``--torch`` adds ``python -c "import torch"``: the least a start that loaded torch would
pay.  (Not through common.py: it imports torch, and nothing here needs it.)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cli() -> list[str]:
    """The installed `ddpm-lottery` script beside this interpreter, else `python -m ddpm_lottery.cli`."""
    script = shutil.which("ddpm-lottery", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "ddpm_lottery.cli"]


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--torch", action="store_true", help='also time python -c "import torch"')
    args = parser.parse_args()
    rows = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ddpm-lottery --help": [*cli(), "--help"],
        "ddpm-lottery train --help": [*cli(), "train", "--help"],
    }
    if args.torch:
        rows['python -c "import torch"'] = [sys.executable, "-c", "import torch"]
    times: dict[str, list[float]] = {name: [] for name in rows}
    for index in range(args.repeats + 1):
        order = list(rows.items())
        for name, command in order if index % 2 == 0 else order[::-1]:
            seconds = wall_seconds(command)
            if index:  # round 0 warms the file cache
                times[name].append(seconds)
    floor = statistics.median(times["python -c pass"])
    print(f"Python {sys.version.split()[0]}, {' '.join(cli())}; wall time per start, median of {args.repeats}")
    print(f"{'command':<28}{'median s':>10}{'best s':>10}{'over python -c pass':>22}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<28}{median:>10.3f}{min(samples):>10.3f}{median - floor:>+21.3f}s")


if __name__ == "__main__":
    main()
