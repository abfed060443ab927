#!/bin/bash
# Session 18's last call: the GPU test of the bias-rounding fix, Vim-S end to end (never measured
# with every Linear quantized), and the batch-1 W4A4O8 / bf16 XLA profiles by source line.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1
timeout 100 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/kernels_pallas/test_mixed_gemm.py 2>&1 | grep -v "^  " | tail -30 > $OUT/gpu_tests.log; tail -3 $OUT/gpu_tests.log
timeout 230 python3 bench/e2e_latency.py --models=vim_s --batches=64,1 --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_s.json 2>&1 | grep -v Warn | tail -9
timeout 150 python3 bench/profile_e2e.py --model=vim_b --batch=1 --variants=bf16_xla,w4a4o8 --iters=5 --by_source --top=40 --out=$OUT/profile_b1.json > $OUT/profile_b1.txt 2>&1
grep -A12 "^== " $OUT/profile_b1.txt | head -30; date -u
