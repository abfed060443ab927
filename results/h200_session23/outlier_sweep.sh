#!/bin/bash
# Issue 15's latency-vs-n_refresh/k figure with every Linear quantized (session 9's was made
# before session 17 quantized dt_proj/x_proj too): Vim-B batch 64, W4A4O8, float baseline
# bf16 + Pallas scan in the same process. The JSON is rewritten after every cell, so a call that
# ends early still returns the cells it finished. Plot on the CPU:
#   python bench/outlier_sweep.py --plot=results/h200_session23/outlier_sweep_vim_b.json
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
S=$(date +%s)
timeout ${T:-540} python3 bench/outlier_sweep.py --model=vim_b --batch=64 --iters=10 \
  --out=$OUT/outlier_sweep_vim_b.json 2>&1 | grep -v "^W\|^I"
echo "total $(( $(date +%s) - S )) s"
