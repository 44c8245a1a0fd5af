#!/usr/bin/env python
"""Print the rows of a study's findings.md that the README shows, verbatim and in the README's order, so the
README's study table is pasted from the study's own output, never retyped (tests/test_readme.py checks it).

    python scripts/readme-study-rows.py [results/cpu-digits/findings.md]
"""

import sys
from pathlib import Path

SHOWN = ([("unified − dense", s) for s in ("50.00", "75.00", "87.50", "93.75")]
         + [("global − dense", s) for s in ("75.00", "87.50")]
         + [("varying − dense", s) for s in ("50.00", "75.00")]
         + [("varying-reverse − dense", s) for s in ("50.00", "75.00")]
         + [("varying − unified", s) for s in ("50.00", "75.00", "87.50")]
         + [("varying − global", "75.00")]
         + [("unified − reinit control", s) for s in ("50.00", "87.50", "93.75")]
         + [("unified − random control", s) for s in ("50.00", "87.50", "93.75")]
         + [("varying − varying-reverse", s) for s in ("75.00", "87.50")])


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu-digits/findings.md")
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| question |"))
    print(lines[header])
    print(lines[header + 1])
    for comparison, sparsity in SHOWN:
        hits = [line for line in lines if line.startswith("| (") and f"| {comparison} | {sparsity} % |" in line]
        if not hits:
            print(f"not in {path}: {comparison} at {sparsity} %", file=sys.stderr)
        for line in hits:
            print(line)
    cka = [line for line in lines if "_cka_" in line and line.startswith("| ")]
    if cka:  # the (d) table: the paper's weight CKA and linear activation CKA, every level and layer scope
        start = lines.index(cka[0])
        shown = [line for line in cka if "| weight_cka_rbf |" in line or "| activation_cka_linear |" in line]
        print("\n" + "\n".join(lines[start - 2:start] + shown))


if __name__ == "__main__":
    main()
