#!/bin/bash
# Session 38's card plan for issue 15 (carry .whl), one PART per call (an H200 was asked for; every
# part ran on an H100):
#   PART=narrow_grid bash results/session38/run.sh
# narrow_grid (~7 min): (1) Vim-B batch 64, W8A8 and W4A4O8, x_proj's 64 x 64 tile on the unpacked
#   weight (mixed_gemm config.NARROW_N_SMALL_TILE_ABOVE_ROWS, session 37) against the older rule,
#   one process; (2) issue 15's Vim-B grid, batches 64 and 1, today's defaults (trees laid out for
#   their batch by prepared_for_inference), another process: results/bench_e2e_latest.json.
# warps_ts (~6 min): (1) act_quant at 1, 2 and 4 warps per program, batches 64 and 1 (1-16 warps
#   at batch 1: the small-grid rule); (2) Vim-T and Vim-S at batch 64 with both scan directions as
#   one vmapped batch (`batch_directions=1`) against today's rule (looped from batch 64, measured on
#   Vim-B only, session 13): if vmapped wins, the rule should follow batch x d_inner.
# profile (~5 min): device time per kernel family and per model line, Vim-B batches 64 and 1,
#   W4A4O8 and bf16 + Pallas, the trees laid out for their batch (the last profile, session 34,
#   predates the prepared trees and sessions 35-37's kernels).
# tests_split (~6 min; its 240 s stopped the tests after 33 of 40 passed): the GPU test suite of the kernels at this tip (x_proj's 64 x 64 tile of
#   session 37 included), then the time split's program target at batches 2 and 8 (session 33's
#   `PART=split`, never run; the scan is the same in both paths, so bf16 + Pallas only): the
#   default against no split and a target of 128 programs.
# grid_ts (~9 min): Vim-T and Vim-S, batches 64 and 1, today's defaults (the table's rows are
#   sessions 17 / 18's H200 runs, before the prepared trees and most of the kernels).
set -u
. bench/device_env.sh

e2e() {   # e2e LIMIT_S OUT_NAME TAIL_LINES ARGS...: one bench process, its summary lines
  local limit=$1 name=$2 lines=$3; shift 3
  timeout "$limit" python3 bench/e2e_latency.py "$@" --out="$OUT/$name" 2>&1 | quiet \
    | grep -v compiled | tail -"$lines"
}

case ${PART:-narrow_grid} in
  narrow_grid)
    e2e 150 e2e_vim_b_narrow.json 8 --models=vim_b --batches=64 --variants=w8a8,w4a4o8 \
      --iters=30 --cases=default,gemm_narrow_n_small_tile=0
    e2e 400 e2e_vim_b_grid.json 10 --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 ;;
  warps_ts)
    for B in 64 1; do
      W=1,2,4; [ $B = 1 ] && W=1,2,4,8,16
      timeout 110 python3 -m kernels_pallas.act_quant.bench --trials=15 --batch=$B --warps=$W \
        --out=$OUT/act_quant_warps_b$B.json 2>&1 | quiet | grep -v "^ " | tail -24
    done
    e2e 330 e2e_vim_ts_vmapped.json 10 --models=vim_t,vim_s --batches=64 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=20 --cases=default,batch_directions=1 ;;
  grid_ts)
    e2e 560 e2e_vim_ts_grid.json 12 --models=vim_t,vim_s --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 ;;
  tests_split)
    timeout 240 python3 -m pytest -q -o addopts= -m gpu -p no:cacheprovider tests/kernels_pallas \
      2>&1 | quiet | tail -6
    echo "tests at $(( $(date +%s) - S )) s"
    e2e 170 e2e_vim_b_split_rule.json 10 --models=vim_b --batches=2,8 \
      --variants=bf16_pallas_scan --iters=20 \
      --cases=default,scan_segment_programs=0,scan_segment_programs=128 ;;
  profile)
    for B in 64 1; do
      timeout 270 python3 bench/profile_e2e.py --model=vim_b --batch=$B \
        --variants=w4a4o8,bf16_pallas_scan --iters=3 --by_source \
        --out=$OUT/profile_vim_b_b$B.json 2>&1 | quiet | tail -90
      echo "batch $B at $(( $(date +%s) - S )) s"
    done ;;
esac
echo "total $(( $(date +%s) - S )) s"
