#!/bin/bash
# Session 31's card plan for issue 15, one PART per call (carry .whl):
#   PART=ab|unroll|grid|b1|b1profile|b64 bash results/h200_session31/run.sh
# (ab, unroll and grid ran in session 31 on an H100: BENCHMARKS.md "Session 31"; b1 is next)
# ab (~9 min): what the blocks' stacked params cost, in one process, Vim-B batch 64 and 1:
#   the blocks unrolled on their own params (scan_blocks=0: no per-call stacking and no
#   per-block slices of stacked params, which reach the Pallas kernels as device copies:
#   memcpy32_post 601 launches per quantized forward against the float path's 121, session 30)
#   and XLA's dynamic-slice fusion as a compile option (session 30 timed it through XLA_FLAGS in
#   separate processes only), both paths alike.
# unroll (~9 min): PART=ab's call 1 (H100) found the blocks unrolled 2.6-2.9 ms faster at batch 64
#   in both paths but 2.5-2.7 ms slower at batch 1: the block scan over the stacked params
#   unrolled instead (scan_unroll=24: the directions stacked once, as in the loop), with and
#   without the dynamic-slice fusion.
# grid (~7 min): issue 15's Vim-B table in one process (bf16 XLA, bf16 + Pallas, W8A8, W4A4O8,
#   batches 64 and 1): the new results/bench_e2e_latest.json.
set -u
. bench/device_env.sh

case ${PART:-ab} in
  ab)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 \
      --cases=default,scan_blocks=0,xla_dynamic_slice_fusion=1 \
      --out=$OUT/e2e_vim_b_ab.json 2>&1 | quiet | tail -24 ;;
  unroll)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 \
      --cases=default,scan_unroll=24,scan_unroll=24+xla_dynamic_slice_fusion=1 \
      --out=$OUT/e2e_vim_b_unroll.json 2>&1 | quiet | tail -24 ;;
  grid)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b_grid.json \
      2>&1 | quiet | tail -30 ;;
  b1)
    # Batch 1 (~5 min): wall 7.2 ms against 5.2 ms of device time for W4A4O8 (session 30's
    # profile): XLA's CUDA graphs for every op (xla_command_buffer=1) and none (=0) against
    # the default, and the unrolled block scan that loses at batch 1 (session 31).
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=1 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=30 \
      --cases=default,xla_command_buffer=1,xla_command_buffer=0,scan_unroll=24 \
      --out=$OUT/e2e_vim_b_b1.json 2>&1 | quiet | tail -24 ;;
  b1profile)
    # (~5 min) why batch 1 is slower with the block scan unrolled: kernels and launches of
    # both forms (the profile takes e2e_latency's flags).
    for U in 1 24; do
      timeout 270 python3 bench/profile_e2e.py --model=vim_b --batch=1 --scan_unroll=$U \
        --variants=w4a4o8,bf16_pallas_scan --iters=5 --out=$OUT/profile_vim_b_b1_unroll$U.json \
        2>&1 | quiet | grep -A 14 "^=="
    done ;;
  b64)
    # (~5 min) batch 64 with the unrolled block scan: both directions as one vmapped batch
    # again (session 13, with the loop: no gain in W4A4O8, the float path slower).
    timeout 400 python3 bench/e2e_latency.py --models=vim_b --batches=64 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 --cases=default,batch_directions=1 \
      --out=$OUT/e2e_vim_b_b64_directions.json 2>&1 | quiet | grep "batch " ;;
esac
echo "total $(( $(date +%s) - S )) s"
