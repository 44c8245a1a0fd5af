#!/usr/bin/env bash
# Every command's CUDA path at small settings; writes OUT/cuda-check.json. See scripts/cuda_check.py.
#   bash scripts/cuda-check.sh                        # on a GPU machine: ddpm-cifar10, under 8 minutes
#   bash scripts/cuda-check.sh --device cpu --smoke   # the same checks on the tiny network (the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/cuda_check.py "$@"
