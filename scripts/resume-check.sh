#!/usr/bin/env bash
# Kill a training run with SIGKILL mid-way, resume it, and compare it with an uninterrupted run:
# the weights, the EMA and the logged losses must be identical (CPU).
#   scripts/resume-check.sh [WORKDIR] [SECONDS_BEFORE_KILL]
set -euo pipefail
work="${1:-$(mktemp -d)}"
wait_s="${2:-25}"
args=(--steps 300 --checkpoint-every 50 --log-every 10 --no-progress --device cpu)
mkdir -p "$work" && cd "$work"
rm -rf full killed
ddpm-lottery train "${args[@]}" --out full > /dev/null
ddpm-lottery train "${args[@]}" --out killed > /dev/null 2>&1 & pid=$!
sleep "$wait_s"; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
level=level_00
pointer=killed/$level/checkpoints/latest.json
[ -f "$pointer" ] || { echo "no checkpoint was written in ${wait_s} s: give more SECONDS_BEFORE_KILL"; exit 1; }
[ -f killed/$level/weights.safetensors ] && { echo "the run finished within ${wait_s} s: give fewer SECONDS_BEFORE_KILL"; exit 1; }
echo "killed after logging step $(tail -1 killed/$level/metrics.jsonl | grep -o '"step": [0-9]*' | grep -o '[0-9]*'); last checkpoint: step $(grep -o '"step": [0-9]*' "$pointer" | grep -o '[0-9]*')"
ddpm-lottery train "${args[@]}" --out killed --resume | grep resuming
python - <<'PY'
import sys
from safetensors.torch import load_file
import torch
ok = True
for part in ("weights", "ema"):
    a, b = (load_file(f"{run}/level_00/{part}.safetensors") for run in ("full", "killed"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"{part}: {len(a)} tensors {'identical' if same else 'DIFFER'}")
    ok &= same
sys.exit(0 if ok else 1)
PY
losses() { python -c "import json,sys; [print(r['step'], r['loss']) for r in map(json.loads, open(sys.argv[1]))]" "$1"; }
cmp <(losses full/$level/metrics.jsonl) <(losses killed/$level/metrics.jsonl) \
  && echo "losses identical ($(wc -l < full/$level/metrics.jsonl) log lines)"
