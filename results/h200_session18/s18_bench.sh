#!/bin/bash
# Next session's first call (written in session 17): the GPU tests of session 17's mixed-GEMM
# change (masked K tail, bias in the epilogue), Vim-B end to end (compare session 16: b64
# W4A4O8 41.2 / bf16+Pallas 26.4 ms; b1 8.43 / bf16 XLA 5.07), then the W4A4O8 profile by
# source line (b64 and b1) to find the remaining XLA glue.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels_pallas/test_mixed_gemm.py 2>&1 | tail -5 | tee $OUT/gpu_tests.log
timeout 200 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b.json 2>&1 | grep -v Warn | tail -12
for b in 64 1; do timeout 100 python3 bench/profile_e2e.py --model=vim_b --batch=$b --variants=bf16_pallas_scan,w4a4o8 --iters=3 --by_source --top=30 --out=$OUT/profile_b$b.json 2>&1 | grep -v Warn | tail -75 > $OUT/profile_b$b.txt; done
tail -40 $OUT/profile_b64.txt; date -u
