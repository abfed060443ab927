#!/bin/bash
# usage (a session with a card, each PART alone on a call, carry .whl), in priority order; the
# parts take ~35 min together (session 25 folded e2e_b1 and state_quant into e2e's one process),
# more than one session's 30 min of card time, so stop where the budget ends and leave the rest
# to the next session:
#   PART=kernels|e2e|gemm_sweep|sweep|readout bash results/h200_session24/next_i15.sh
# kernels (~8 min): GPU tests of act_quant (session 23's paired reductions, session 24's
#   DirectionMean producer), of the state-quant scan and of session 25's direction mean in the
#   scan's epilogue; act_quant's bench at batch 64 (also at 2
#   and 8 warps: at C = 1536 8 warps take 40 registers and 325 instructions a step, 4 take 64 and
#   543: occupancy against instructions, act_quant NOTES), then at
#   batch 1 with 2/4/8/16 warps (session 24's small-grid rule: 8 warps at C = 1536 from SASS).
# e2e (~6 min, two processes, Vim-B quantized once in each; `bench/e2e_latency.py --cases`):
#   W4A4O8 and bf16 + Pallas at batch 64 and 1 in three cases: the defaults; the directions' mean fused
#   (fuse_linear_inputs=1: at batch 64 the backward scan writes it, in both variants; at batch 1
#   W4A4O8's out_proj act_quant reads both outputs); the small-grid warps off
#   (act_quant_small_grid=0, a batch-1 question); then batch 64 alone with and without B and C
#   quantized inside the scan (scan_state_quant=1: predicted to lose, the scan's loop body 719 -> 2,996 SASS instructions,
#   BENCHMARKS.md session 24; delete state_quant.py if it does).
# gemm_sweep (~9 min): the mixed GEMM's tiles at Vim shapes, M = 64 / 1 / 16 x 197 tokens
#   (--sweep; session 24 replaced the two sweep tiles that exceeded sm_90's shared memory), for
#   per-shape defaults.
# sweep (~9 min): the latency-vs-n_refresh/k figure (results/h200_session23/outlier_sweep.sh).
# readout (~6 min): the patched readout's by_state kernels (results/h200_session21/next_readout.sh).
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
# no MPS daemon from an earlier call (session 23: see results/h200_session22/s22.sh)
pgrep -x nvidia-cuda-mps > /dev/null && { echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control; sleep 3; }
S=$(date +%s); mkdir -p $OUT

e2e() {  # name timeout batches flags...
  local name=$1 limit=$2 batches=$3; shift 3
  timeout $limit python3 bench/e2e_latency.py --models=vim_b --batches=$batches \
    --variants=bf16_pallas_scan,w4a4o8 --iters=15 "$@" --out=$OUT/e2e_vim_b_$name.json 2>&1 \
    | grep -v "^W\|^I" | tail -40
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - S )) s"
}

case ${PART:-kernels} in
  kernels)
    timeout 170 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_act_quant_producers.py tests/kernels_pallas/test_selective_scan_state_quant.py \
      "tests/kernels_pallas/test_selective_scan_triton.py::test_gpu_mean_with_equals_the_scan_then_the_direction_mean" \
      2>&1 | grep -E "mismatch|rel err|passed|failed" | tail -20
    timeout 150 python3 -m kernels_pallas.act_quant.bench --trials=5 --warps=2,8 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^W\|^I" | tail -24
    timeout 120 python3 -m kernels_pallas.act_quant.bench --trials=5 --batch=1 --warps=2,4,8,16 \
      --out=$OUT/act_quant_bench_b1.json 2>&1 | grep -v "^W\|^I" | tail -30
    echo "act_quant benches at $(( $(date +%s) - S )) s" ;;
  gemm_sweep)  # batch 64, 1 and 16 (issue 15 item 4 asks for the small batches' shapes too)
    for T in 12608 197 3152; do
      timeout 180 python3 -m kernels_pallas.mixed_gemm.bench --sweep --trials=5 --tokens=$T \
        --out=$OUT/mixed_gemm_sweep_m$T.json 2>&1 | grep -v "^W\|^I" | tail -40
      echo "tokens $T at $(( $(date +%s) - S )) s"
    done ;;
  readout)
    TESTS=0 OUT=$OUT/readout bash results/h200_session21/next_readout.sh ;;
  e2e)  # the state-quant scan in a process of its own: a compile stall there loses nothing else
    e2e cases 330 64,1 --cases=default,fuse_linear_inputs=1,act_quant_small_grid=0
    e2e scan_state_quant 200 64 --cases=default,scan_state_quant=1 ;;
  sweep)
    T=540 bash results/h200_session23/outlier_sweep.sh ;;
esac
echo "total $(( $(date +%s) - S )) s"
