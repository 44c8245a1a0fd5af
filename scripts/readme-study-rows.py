#!/usr/bin/env python
"""The rows of a study's findings.md that the README shows, verbatim and in the README's order, so the README's
study tables are pasted from the study's own output, never retyped (tests/test_readme.py checks them).

    python scripts/readme-study-rows.py [results/cpu-digits/findings.md]          # print them
    python scripts/readme-study-rows.py --write [results/cpu-digits/findings.md]  # put them into README.md

``--write`` replaces what stands between the README's ``<!-- study-rows -->`` and ``<!-- study-cka -->`` markers
and their ``<!-- /... -->`` ends.
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
README = Path(__file__).resolve().parents[1] / "README.md"


def tables(path: Path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| question |"))
    rows = lines[header:header + 2]
    for comparison, sparsity in SHOWN:
        hits = [line for line in lines if line.startswith("| (") and f"| {comparison} | {sparsity} % |" in line]
        if not hits:
            print(f"not in {path}: {comparison} at {sparsity} %", file=sys.stderr)
        rows += hits
    cka = [line for line in lines if "_cka_" in line and line.startswith("| ")]
    shown = []
    if cka:  # the (d) table: the paper's weight CKA and linear activation CKA, every level and layer scope
        start = lines.index(cka[0])
        shown = lines[start - 2:start] + [line for line in cka
                                          if "| weight_cka_rbf |" in line or "| activation_cka_linear |" in line]
    return {"study-rows": rows, "study-cka": shown}


def write(found: dict[str, list[str]]) -> None:
    text = README.read_text()
    for name, rows in found.items():
        start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
        if start not in text or end not in text:
            sys.exit(f"README.md has no {start.strip()} ... {end} block")
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + start + "\n" + "\n".join(rows) + "\n\n" + end + after  # blank lines: the table stands alone
    README.write_text(text)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--write"]
    found = tables(Path(args[0] if args else "results/cpu-digits/findings.md"))
    if "--write" in sys.argv:
        write(found)
    else:
        print("\n".join(found["study-rows"]) + ("\n\n" + "\n".join(found["study-cka"]) if found["study-cka"] else ""))


if __name__ == "__main__":
    main()
