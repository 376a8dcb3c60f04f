#!/usr/bin/env bash
# The one prepared check for a session that is lent a GPU: one call, under 8 minutes, one table.
#   bash bench/gpu_check.sh        (from the repository root, after the README's install command)
# The engine tests and the training tests run on CUDA (a row each); then bench/gpu_check.py
# measures encoder against whole prediction (target >= 80%), peak GPU memory and the
# `sam2pal bench` numbers (with --compile) at 1024 px bf16 for random tiny and large.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=/tmp/gpu_check.log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
work=$(mktemp -d)
for part in engine train; do
  SAM2PAL_TEST_DEVICE=cuda timeout 75 "$PY" -m pytest -q -p no:cacheprovider "tests/test_$part.py" \
    --junitxml "$work/$part.xml" >> "$LOG" 2>&1
done
timeout 300 "$PY" bench/gpu_check.py --device cuda --image-size 1024 --tests-junit "$work/engine.xml" "$work/train.xml" 2>> "$LOG"
echo "(pytest's output, progress and warnings: $LOG)"
rm -rf "$work"
