#!/usr/bin/env bash
# Does this checkout measure the same numbers as an earlier revision?  Runs one small study (a dense model,
# unified and varying tickets, the re-init and random-mask controls, two data seeds, the held-out loss, the
# domain Fréchet distance and CKA) with the code of REV and with this checkout, on the embedded digits, and
# compares every trained tensor bit for bit and every measured figure (value, interval, resamples, CKA).
#
#   scripts/same-numbers.sh REV        (REV must have `ddpm-lottery study`; KEEP=1 keeps the two runs)
set -euo pipefail
rev=${1:?give the git revision to compare with}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/src" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/src" "$rev" >/dev/null
grep -q "def run_study" "$work/src/src/ddpm_lottery/study.py" 2>/dev/null \
  || { echo "revision $rev has no \`ddpm-lottery study\`: compare with a later one" >&2; exit 2; }
cat > "$work/small.toml" <<'TOML'
[study]
name = "same-numbers"
data_seeds = [0, 1]
cka_search = "unified"
[model]
preset = "tiny"
[train]
steps = 40
batch_size = 16
checkpoint_every = 20
[prune]
prune_ratio = 0.5
sparsity_schedule = [0.5, 0.75]
[runtime]
device = "cpu"
[eval]
measures = ["loss", "domain"]
num_samples = 64
reference_samples = 128
bootstrap_rounds = 40
heldout_images = 64
loss_bands = 4
[sampling]
sampling_steps = 5
[cka]
batch = 8
[searches.unified]
strategy = "unified"
[searches.varying]
strategy = "varying"
[controls]
reinit = ["unified"]
random = ["unified"]
TOML
for side in old new; do
  src=$([ $side = old ] && echo "$work/src/src" || echo "$root/src")
  DDPM_LOTTERY_CACHE="$work/cache-$side" PYTHONPATH="$src" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} \
    python -m ddpm_lottery.cli study "$work/small.toml" --out "$work/$side" --no-progress > "$work/$side.log" 2>&1 \
    || { echo "the $side code failed; its log:" >&2; tail -5 "$work/$side.log" >&2; exit 1; }
done
python - "$work" <<'PY'
import json, re, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
work = Path(sys.argv[1])
old, new = work / "old" / "runs", work / "new" / "runs"
# how long something took, where and when, differ from run to run: everything else must not
CLOCK = re.compile(r"time|seconds|_s$|per_s|device|host|pid|started|finished|date|version", re.I)
def numbers(value):
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if not CLOCK.search(k)}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value
def same(a: Path, b: Path) -> bool:
    if not b.is_file():
        return False
    if a.suffix == ".safetensors":
        x, y = load_file(str(a)), load_file(str(b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # a record may name its own folder (a control's source run): the two studies' folders differ by design
    return (numbers(json.loads(a.read_text())) ==
            numbers(json.loads(b.read_text().replace(str(work / "new"), str(work / "old")))))
checked = {"tensors": [], "figures": []}
for a in sorted(old.rglob("*")):
    if a.suffix == ".safetensors" and "checkpoints" not in a.parts:
        checked["tensors"].append((a, same(a, new / a.relative_to(old))))
    elif a.suffix == ".json" and ("eval" in a.parts or a.name == "metrics.json"):
        checked["figures"].append((a, same(a, new / a.relative_to(old))))
for a in sorted((work / "old").glob("cka/**/*.json")):
    checked["figures"].append((a, same(a, work / "new" / a.relative_to(work / "old"))))
ok = True
for kind, results in checked.items():
    differ = [str(a.relative_to(work / "old")) for a, equal in results if not equal]
    print(f"{kind} files identical: {len(results) - len(differ)}/{len(results)}", *differ[:10])
    ok &= bool(results) and not differ
if not ok:
    print(f"the two studies: {work / 'old'} and {work / 'new'}" if __import__("os").environ.get("KEEP")
          else "KEEP=1 keeps the two studies to compare them")
sys.exit(0 if ok else 1)
PY
