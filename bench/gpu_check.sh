#!/usr/bin/env bash
# The one prepared check for a session that is lent a GPU: one call, under 8 minutes, one table.
#   bash bench/gpu_check.sh        (from the repository root, after the README's install command)
# The engine and training tests run on CUDA (their result is the table's first row); then
# bench/gpu_check.py measures encoder against whole prediction (target >= 80%), peak GPU memory and
# the `sam2pal bench` numbers (with --compile) at 1024 px bf16 for random tiny and large.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
junit=$(mktemp --suffix .xml)
SAM2PAL_TEST_DEVICE=cuda timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_train.py \
  --junitxml "$junit" > /dev/null 2>&1
timeout 300 "$PY" bench/gpu_check.py --device cuda --image-size 1024 --tests-junit "$junit" 2>/tmp/gpu_check.log
echo "(progress and warnings: /tmp/gpu_check.log)"
rm -f "$junit"
