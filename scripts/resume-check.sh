#!/usr/bin/env bash
# Kill a training run with SIGKILL mid-way, resume it, and compare it with an uninterrupted run:
# the weights, the EMA and the logged losses must be identical (CPU).
#   scripts/resume-check.sh [WORKDIR] [SECONDS_BEFORE_KILL]
set -euo pipefail
work="${1:-$(mktemp -d)}"
wait_s="${2:-25}"
args=(--steps 300 --checkpoint-every 50 --log-every 10 --no-progress --device cpu)
mkdir -p "$work" && cd "$work"
ddpm-lottery train "${args[@]}" --out full > /dev/null
ddpm-lottery train "${args[@]}" --out killed > /dev/null 2>&1 & pid=$!
sleep "$wait_s"; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
echo "killed at: $(tail -1 killed/metrics.jsonl | cut -d, -f1); last checkpoint: $(grep -o '"step": [0-9]*' killed/checkpoints/latest.json)"
ddpm-lottery train "${args[@]}" --out killed --resume | grep resuming
for part in model ema; do
  a=$(sha256sum < full/$part/diffusion_pytorch_model.safetensors); b=$(sha256sum < killed/$part/diffusion_pytorch_model.safetensors)
  [ "$a" = "$b" ] && echo "$part weights identical: ${a%% *}" || { echo "$part weights differ"; exit 1; }
done
cmp <(cut -d, -f1-2 full/metrics.jsonl) <(cut -d, -f1-2 killed/metrics.jsonl) && echo "losses identical ($(wc -l < full/metrics.jsonl) log lines)"
