#!/usr/bin/env bash
# The one prepared check for a session that is lent a GPU: at most 8 minutes, one table each part.
#   bash bench/gpu_check.sh        (from the repository root, after the README's install command)
# 1. the engine and training tests on CUDA; 2. `sam2pal bench` at 1024 px bf16 for tiny and large;
# 3. encoder alone against whole prediction (target: predict >= 80% of encoder img/s), peak memory.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "## 1. engine tests on CUDA"
SAM2PAL_TEST_DEVICE=cuda timeout 180 "$PY" -m pytest -q -x tests/test_engine.py tests/test_train.py tests/test_mixed_precision.py 2>&1 | tail -5
echo "## 2. sam2pal bench, 1024 px (bf16 autocast on CUDA)"
for model in random:tiny random:large; do
  timeout 120 "$PY" -m sam2pal.cli bench --model "$model" --image-size 1024 --device cuda --specimens 8 --steps 4 2>&1 | grep '^|'
done
echo "## 3. encoder vs whole prediction, peak GPU memory"
timeout 120 "$PY" bench/gpu_check.py --device cuda --image-size 1024
