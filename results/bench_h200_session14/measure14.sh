#!/bin/bash
# usage: bash .gpu/measure14.sh -- issue 15: act_quant's parallel window vs the serial walk
# (GPU parity, the kernel bench, Vim-B end to end), then the batch_directions threshold.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
mkdir -p $OUT
python3 -m pytest -q -s -m gpu tests/kernels_pallas/test_act_quant_window.py 2>&1 | grep -v "^$" | tail -12 | tee $OUT/gpu_tests.log
python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^  " | tail -28
for w in serial parallel; do
  timeout 200 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=15 --act_quant_window=$w --out=$OUT/e2e_vim_b_$w.json > $OUT/e2e_vim_b_$w.log 2>&1
  tail -9 $OUT/e2e_vim_b_$w.log; date -u
done
