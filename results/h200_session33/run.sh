#!/bin/bash
# Session 33's card plan for issue 15 (it supersedes results/h200_session32/run.sh, whose parts
# are all here), one PART per call (carry .whl):
#   PART=tests|gemm|b1|stack|split|grid bash results/h200_session33/run.sh
# Session 33 changed the stored weight layout (K-major, int4 packed in halves along K): no
# per-call transpose of any weight, one elementwise unpack per int4 Linear and call, and the
# in-kernel unpack (`weights_as_stored`) rebuilt on inline PTX. None of it has run on a card.
# tests (~4 min): the GPU tests of the scan (the time split) and of the mixed GEMM (the PTX
#   unpack of the weights read as stored).
# gemm (~4 min): the kernel bench at Vim-B's shapes, batch 64 and batch 1 (197 rows): the
#   kernel on XLA's unpacked weight against the one reading it as stored (triton_w4a4o8_as_stored).
# b1 (~6 min): Vim-B batch 1: the block scan unrolled (UNROLL_BLOCKS_FROM 2 -> 1?) and the GEMM
#   reading its weights as stored for calls of <= 512 rows (WEIGHTS_AS_STORED_UP_TO_ROWS 0 ->
#   512?), alone and together.
# stack (~5 min): Vim-B batches 1 and 8 (directions vmapped) with the trees prepared by
#   vim.with_directions_stacked (stack_directions=1: no per-call stack of the directions' params,
#   336 us of device time in W4A4O8 at batch 1, 93 us in float, session 32's profile) against
#   the trees as stored.
# split (~6 min): the time split's program target at batches 2-8 (256, the default; 0; 128).
# grid (~7 min): issue 15's Vim-B table with today's defaults (results/bench_e2e_latest.json).
set -u
. bench/device_env.sh

case ${PART:-tests} in
  tests)
    timeout 280 python3 -m pytest -q -m gpu tests/kernels_pallas/test_selective_scan_triton.py \
      tests/kernels_pallas/test_mixed_gemm.py 2>&1 | quiet | tail -6 ;;
  gemm)
    timeout 280 python3 -m kernels_pallas.mixed_gemm.bench --shapes=vim_b --out=$OUT/gemm_b64.json \
      2>&1 | quiet | grep -v '^ *$' | tail -40
    timeout 200 python3 -m kernels_pallas.mixed_gemm.bench --shapes=vim_b --tokens=197 \
      --out=$OUT/gemm_b1.json 2>&1 | quiet | grep -v '^ *$' | tail -40 ;;
  b1)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=1 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=30 \
      --cases=default,scan_unroll=24,gemm_weights_as_stored=512,scan_unroll=24+gemm_weights_as_stored=512 \
      --out=$OUT/e2e_vim_b_b1_unroll_gemm.json 2>&1 | quiet | grep -v compiled | tail -16 ;;
  stack)
    timeout 560 python3 bench/e2e_latency.py --models=vim_b --batches=1,8 \
      --variants=bf16_xla,bf16_pallas_scan,w4a4o8 --iters=30 --cases=default,stack_directions=1 \
      --out=$OUT/e2e_vim_b_stack_directions.json 2>&1 | quiet | grep -v compiled | tail -16 ;;
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
