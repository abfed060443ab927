#!/bin/bash
# usage (the next session, each PART alone on a fresh card, carry .whl; kernels first): PART=kernels|e2e|sweep
#   bash results/h200_session23/next_i15.sh
# e2e (~6 min): Vim-B end to end again (session 23's runs printed nothing in 170 s; the unrolled
#   act_quant kernels they compiled take ~50x the loop's compile time and are gone). W4A4O8
#   and the float baseline at batch 64 and 1, then with B and C quantized inside the scan
#   (--scan_state_quant=1); each process under its own timeout, printing a line per finished
#   compile (bench/e2e_latency.py since session 23).
# kernels (~8 min): act_quant's and the state-quant scan's GPU tests, act_quant's bench (Vim-B
#   widths first, JSON after every shape), then the patched readout's by_state kernels
#   (results/h200_session21/next_readout.sh, TESTS=0).
# sweep (~9 min): the latency-vs-n_refresh/k figure (results/h200_session23/outlier_sweep.sh).
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
# no MPS daemon from an earlier call (session 23: see results/h200_session22/s22.sh)
pgrep -x nvidia-cuda-mps > /dev/null && { echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control; sleep 3; }
S=$(date +%s); mkdir -p $OUT
case ${PART:-kernels} in
  e2e)
    # name:timeout:flags (each run has the float baseline in its own process)
    for V in "default:250:" "scan_state_quant:250:--scan_state_quant=1"; do
      name=${V%%:*}; rest=${V#*:}; limit=${rest%%:*}; flags=${rest#*:}
      timeout $limit python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
        --variants=bf16_pallas_scan,w4a4o8 --iters=15 $flags --out=$OUT/e2e_vim_b_$name.json 2>&1 \
        | grep -v "^W\|^I" | tail -14
      echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - S )) s"
    done ;;
  kernels)
    # act_quant's GPU cases first: session 23 changed its reductions (one per statistic pair)
    timeout 150 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_selective_scan_state_quant.py 2>&1 | grep -E "mismatch|rel err|passed|failed" | tail -16
    timeout 240 python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^W\|^I" | tail -30
    echo "act_quant bench at $(( $(date +%s) - S )) s"
    TESTS=0 OUT=$OUT/readout bash results/h200_session21/next_readout.sh ;;
  sweep)
    T=540 bash results/h200_session23/outlier_sweep.sh ;;
esac
echo "total $(( $(date +%s) - S )) s"
