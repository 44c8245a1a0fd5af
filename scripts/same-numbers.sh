#!/usr/bin/env bash
# Does this checkout measure the same numbers as an earlier revision?  Runs one small quickstart with
# the code of REV and with this checkout, on data both read the same way, and compares every trained
# weight bit for bit and the report's table (FID, KID, FLOPs, parameters, storage) and CKA.
#
#   scripts/same-numbers.sh REV [DATA_FOLDER]
#
# DATA_FOLDER: a folder of images in class subfolders (default: ../shared/data/cifar10-test-jpeg-500).
set -euo pipefail
rev=${1:?give the git revision to compare with}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${2:-$root/../shared/data/cifar10-test-jpeg-500}
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/src" "$rev" >/dev/null
args=(--dataset imagefolder --data-dir "$data" --steps-per-level 40 --batch-size 16 --num-samples 24
      --reference-samples 48 --kid-subset-size 12 --sampling-steps 4 --device cpu --no-progress)
export DDPM_LOTTERY_CACHE="$work/cache"
PYTHONPATH="$work/src/src" python -m ddpm_lottery.cli quickstart --out "$work/old" "${args[@]}" > "$work/old.log"
PYTHONPATH="$root/src" python -m ddpm_lottery.cli quickstart --out "$work/new" "${args[@]}" > "$work/new.log"
python - "$work" <<'PY'
import re, sys
from pathlib import Path
from safetensors.torch import load_file
import torch
work = Path(sys.argv[1])
# run, level, sparsity, FLOPs, parameters, storage, FID, KID: everything but how long it took
rows = lambda p: [l.split("|")[1:9] for l in (work / p / "report.md").read_text().splitlines()
                  if l.startswith("| ") and "| level |" not in l]
old, new = rows("old"), rows("new")
same_table = [a == b for a, b in zip(old, new)]
weights = sorted(p.relative_to(work / "old") for p in (work / "old").rglob("*.safetensors") if "level_" in str(p)
                 and p.name in ("weights.safetensors", "ema.safetensors"))
differ = [str(w) for w in weights if not all(torch.equal(x, y) for x, y in
          zip(load_file(str(work / "old" / w)).values(), load_file(str(work / "new" / w)).values()))]
cka = [l.split(":", 1)[1].strip() for name in ("old", "new") for l in (work / f"{name}.log").read_text().splitlines()
       if "weight CKA (RBF) upstream half" in l]
print(f"table rows identical: {sum(same_table)}/{len(old)} (FID, KID, sparsity, FLOPs, parameters, storage)")
print(f"trained weight files identical: {len(weights) - len(differ)}/{len(weights)}", *differ)
print(f"CKA: {'identical' if len(set(cka)) == 1 else cka}")
sys.exit(0 if all(same_table) and len(old) == len(new) and not differ and len(set(cka)) == 1 else 1)
PY
