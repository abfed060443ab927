#!/bin/bash
# The next card's plan for issue 15 (session 26's, superseding results/h200_session24/next_i15.sh,
# which ran in session 26). Each PART alone on one call, carrying .whl, in priority order; about
# 37 min together (more than one session's card time), so stop where the budget ends:
#   PART=profile|directions|grid|gemm_sweep|act_quant|grid_ts|readout bash results/h200_session26/next_i15.sh
# profile (~4 min): where W4A4O8's extra ~12 ms at Vim-B batch 64 go today (device time per
#   kernel and per model line, both variants; the last profile is session 18's, before sessions
#   19-26 changed act_quant, the GEMM epilogue and the direction mean).
# directions (~4 min): Vim-B batch 64 with the directions as one vmapped batch against the
#   loop (--cases=default,batch_directions=1): the vmapped form halves the per-direction
#   act_quant and small-GEMM launches, which the n_refresh sweep suggests are a per-launch cost
#   (BENCHMARKS session 26); session 13 found no gain at batch 64, before act_quant got cheaper.
# grid (~7 min): the Vim-B grid of issue 15's table in one process (bf16 XLA, bf16 + Pallas,
#   W8A8, W4A4O8 at batches 64 and 1): the batch-1 ratio needs bf16 XLA in the same run, and
#   results/bench_e2e_latest.json is still session 18's grid.
# gemm_sweep (~6 min): the mixed GEMM's tiles at Vim-B's four Linears in the model's operand
#   form (session 26 fixed the bench), batch 64 then batch 1, for per-shape defaults.
# act_quant (~4 min): the codes kernel at batch 64 over (samples per program, warps) (--sweep:
#   session 24's occupancy question, one wave of programs or two; session 26's --warps rows
#   timed only the since-deleted packed form), and 4 / 8 / 16 warps at batch 1. A winner with
#   more samples per program then gets an e2e A/B: --cases=default,act_quant_tile_elements=4096.
# grid_ts (~8 min): the same grid for Vim-S and Vim-T (last measured in sessions 18 and 17).
# readout (~6 min): the patched readout's by_state kernels (issue 19).
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
pgrep -x nvidia-cuda-mps > /dev/null && { echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control; sleep 3; }
S=$(date +%s); mkdir -p $OUT
quiet() { grep -v "^W\|^I"; }

case ${PART:-profile} in
  profile)
    timeout 280 python3 bench/profile_e2e.py --model=vim_b --batch=64 \
      --variants=w4a4o8,bf16_pallas_scan --iters=3 --by_source --out=$OUT/profile_vim_b_b64.json \
      2>&1 | quiet | tail -80 ;;
  grid)
    timeout 480 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b_grid.json \
      2>&1 | quiet | tail -30 ;;
  grid_ts)
    timeout 500 python3 bench/e2e_latency.py --models=vim_s,vim_t --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_st_grid.json \
      2>&1 | quiet | tail -30 ;;
  directions)
    timeout 330 python3 bench/e2e_latency.py --models=vim_b --batches=64 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 --cases=default,batch_directions=1 \
      --out=$OUT/e2e_vim_b_directions.json 2>&1 | quiet | tail -20 ;;
  gemm_sweep)
    for T in 12608 197; do
      timeout 200 python3 -m kernels_pallas.mixed_gemm.bench --sweep --shapes=vim_b --trials=5 \
        --tokens=$T --out=$OUT/mixed_gemm_sweep_m$T.json 2>&1 | quiet | tail -40
      echo "tokens $T at $(( $(date +%s) - S )) s"
    done ;;
  act_quant)
    timeout 140 python3 -m kernels_pallas.act_quant.bench --trials=5 --sweep --warps=2,8 \
      --out=$OUT/act_quant_bench.json 2>&1 | quiet | tail -80
    timeout 80 python3 -m kernels_pallas.act_quant.bench --trials=5 --batch=1 --warps=4,8,16 \
      --out=$OUT/act_quant_bench_b1.json 2>&1 | quiet | tail -30 ;;
  readout)
    TESTS=0 OUT=$OUT/readout bash results/h200_session21/next_readout.sh ;;
esac
echo "total $(( $(date +%s) - S )) s"
