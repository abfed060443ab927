#!/bin/bash
# Session 37's card plan for issue 15 (carry .whl), one PART per call:
#   PART=stacked bash results/session37/run.sh
# stacked (~4 min; run in session 37, when the bench's default was the tree as stored): Vim-B
#   batches 64 and 1, the trees as stored against the trees prepared by
#   vim.with_directions_stacked (session 34 timed the prepared tree at batch 1 only, and bf16 +
#   Pallas 1.6 ms slower with it at batch 64 in another process), one process.
# For the next card, in this order: narrow, act_warps, ts_vmapped.
# narrow (~2 min): Vim-B batch 64, W8A8 and W4A4O8, x_proj's 64 x 64 tile on the unpacked weight
#   (mixed_gemm config.NARROW_N_SMALL_TILE_ABOVE_ROWS) against the older rule, one process.
# act_warps (~2 min): the act_quant kernel at 1, 2 and 4 warps per program, 15 trials, batches 64
#   and 1 (the warps rule was swept at the host's dispatch floor; SASS for sm_90 at C = 192 /
#   768: 1 warp 401 / 671 instructions per step and no barrier, 2 warps 279 / 422 with 2 / 4,
#   4 warps 212 / 298 with 6 / 4; act_quant NOTES, session 37).
# ts_vmapped (~4 min): Vim-T and Vim-S at batch 64 with both scan directions as one vmapped batch
#   (`batch_directions=1`, the trees laid out for it) against today's rule (looped from batch
#   64, measured on Vim-B only, session 13). At batch 64 Vim-T's per-direction calls are as
#   small as Vim-B's at batch 16, where vmapping won in both paths, and act_quant's calls take
#   ~0.027 ms whatever their width: if vmapped wins here, the rule should follow batch x d_inner.
# Session 37 ran `stacked` and, on the same H100: `PART=ab2` of results/session36/run.sh, `PART=gemm_sweep`
#   (TOKENS=197, then "12608 3152"), `grid_ts` and `sweep` of results/h100_session34/run.sh.
set -u
. bench/device_env.sh

case ${PART:-stacked} in
  stacked)
    timeout 400 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=20 \
      --cases=stack_directions=0,stack_directions=1 --out=$OUT/e2e_vim_b_stacked.json \
      2>&1 | quiet | grep -v compiled | tail -14 ;;
  narrow)
    timeout 150 python3 bench/e2e_latency.py --models=vim_b --batches=64 --variants=w8a8,w4a4o8 \
      --iters=30 --cases=default,gemm_narrow_n_small_tile=0 --out=$OUT/e2e_vim_b_narrow.json \
      2>&1 | quiet | grep -v compiled | tail -8 ;;
  act_warps)
    for B in 64 1; do   # batch 1's default is the small-grid rule (up to 16 warps)
      W=1,2,4; [ $B = 1 ] && W=1,2,4,8,16
      timeout 120 python3 -m kernels_pallas.act_quant.bench --trials=15 --batch=$B --warps=$W \
        --out=$OUT/act_quant_warps_b$B.json 2>&1 | quiet | grep -v "^ " | tail -24
    done ;;
  ts_vmapped)
    timeout 400 python3 bench/e2e_latency.py --models=vim_t,vim_s --batches=64 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=20 --cases=default,batch_directions=1 \
      --out=$OUT/e2e_vim_ts_vmapped.json 2>&1 | quiet | grep -v compiled | tail -10 ;;
esac
echo "total $(( $(date +%s) - S )) s"
