#!/bin/bash
# usage: bash .gpu/threshold14.sh -- issue 15: where both scan directions as one vmapped batch
# stop paying (VisionMamba.batch_directions), Vim-B width at depth 4, batches 2-32, loop vs vmap.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
mkdir -p $OUT
for bd in 0 1; do
  timeout 140 python3 bench/e2e_latency.py --models=vim_b --depth=4 --batches=2,4,8,16,32 --variants=bf16_pallas_scan,w4a4o8 --iters=15 --batch_directions=$bd --out=$OUT/threshold_bd$bd.json > $OUT/threshold_bd$bd.log 2>&1
  tail -9 $OUT/threshold_bd$bd.log; date -u
done
