#!/bin/bash
# Session 32's card plan for issue 15, one PART per call (carry .whl):
#   PART=scan|tests|b1|split|grid bash results/h200_session32/run.sh
# (scan ran in session 32 on an H100, with a second batch-1 process for the 192-program target:
#  BENCHMARKS.md "Session 32"; the rest is next)
# scan (~7 min): the time-split Triton scan (config.time_segments: segments of the sequence
#   walked in parallel, chained by a carry pass) at batch 1 against the XLA associative scan
#   and the unsplit kernel (kernel bench, Vim-T/S/B sizes); then Vim-B end to end at batches 1
#   and 8 (where the rule also splits): the Triton scan at every batch (scan_small_batch=0) with
#   the split (the default target) and without (scan_segment_programs=0), against the
#   associative-scan default below SMALL_BATCH.
# tests (~3 min): the scan's GPU tests.
# b1 (~6 min): Vim-B batch 1, two things built for it in session 32 and not yet timed, alone
#   and together: the block scan unrolled (now that batch 1 runs the Pallas scan: session 32's
#   profile put the unrolled form's loss in fusions of XLA's associative scan; whether
#   UNROLL_BLOCKS_FROM goes from 2 to 1), and the mixed GEMM reading its weights as stored for
#   calls of <= 512 rows (no per-call unpack + transpose copy: whether
#   WEIGHTS_AS_STORED_UP_TO_ROWS goes from 0 to 512).
# split (~6 min): the time split's rule at batches 2-8 (SEGMENT_TARGET_PROGRAMS 256, the
#   default, against no split and a 128-program target; session 32 saw batch 8, split in 2,
#   equal to unsplit in the float path and 5 % slower in W4A4O8, within one run's spread).
# grid (~7 min): issue 15's Vim-B table with the new defaults (results/bench_e2e_latest.json).
set -u
. bench/device_env.sh

case ${PART:-scan} in
  scan)
    timeout 150 python3 -m kernels_pallas.selective_scan.bench --batch=1 --trials=20 \
      --configs=64:2:1:2,64:2:1:2:8,64:2:1:2:12,32:4:1:2:8,32:4:1:2:12,32:2:1:2:16 \
      --out=$OUT/scan_b1.json 2>&1 | quiet | tail -22
    timeout 330 python3 bench/e2e_latency.py --models=vim_b --batches=1,8 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=20 \
      --cases=default,scan_small_batch=0,scan_small_batch=0+scan_segment_programs=0 \
      --out=$OUT/e2e_vim_b_b1_segments.json 2>&1 | quiet | grep -v compiled | tail -24 ;;
  tests)
    timeout 200 python3 -m pytest -q -m gpu tests/kernels_pallas/test_selective_scan_triton.py \
      2>&1 | quiet | tail -4 ;;
  b1)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=1 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=30 \
      --cases=default,scan_unroll=24,gemm_weights_as_stored=512,scan_unroll=24+gemm_weights_as_stored=512 \
      --out=$OUT/e2e_vim_b_b1_unroll_gemm.json 2>&1 | quiet | grep -v compiled | tail -16 ;;
  split)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=2,4,8 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=20 \
      --cases=default,scan_segment_programs=0,scan_segment_programs=128 \
      --out=$OUT/e2e_vim_b_split_rule.json 2>&1 | quiet | grep -v compiled | tail -16 ;;
  grid)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b_grid.json \
      2>&1 | quiet | tail -30 ;;
esac
echo "total $(( $(date +%s) - S )) s"
