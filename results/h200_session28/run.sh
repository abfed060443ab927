#!/bin/bash
# The card plan of sessions 27-28 (one call per PART, carrying .whl):
#   PART=ab|profile|grid|... bash results/h200_session28/run.sh
# Written in session 27; neither session 27 nor 28 was lent a card to run it.
# ab (~8 min): the GPU tests of act_quant_segments (dt, B and C in one launch) and of the mixed
#   GEMM (per-step inlier scales read by row since session 27), then Vim-B at
#   batches 64 and 1 over the cases default, act_quant_segments=1 and batch_directions=1 with
#   it (one process, one quantized tree; at batch 1 the directions are vmapped by default).
# profile, grid, ...: session 26's plan (results/h200_session26/next_i15.sh).
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
case ${PART:-ab} in
  ab)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
    S=$(date +%s); mkdir -p $OUT
    timeout 200 python3 -m pytest -q -o addopts="" -m gpu -s tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_mixed_gemm.py -k "segments or mixed_gemm" 2>&1 | grep -v "^W\|^I" | tail -12
    echo "tests at $(( $(date +%s) - S )) s"
    timeout $(( 570 - $(date +%s) + S )) python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 \
      --cases=default,act_quant_segments=1,batch_directions=1+act_quant_segments=1 \
      --out=$OUT/e2e_vim_b_segments.json 2>&1 | grep -v "^W\|^I" | tail -30
    echo "total $(( $(date +%s) - S )) s" ;;
  *) bash results/h200_session26/next_i15.sh ;;
esac
