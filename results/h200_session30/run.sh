#!/bin/bash
# Session 30's card plan for issue 15, one PART per call (carry .whl), in priority order:
#   PART=grid|profile|ab|dsf bash results/h200_session30/run.sh
# grid (~7 min): issue 15's Vim-B table in one process (bf16 XLA, bf16 + Pallas, W8A8, W4A4O8 at
#   batches 64 and 1) with session 29's defaults (per-shape GEMM tiles, dt/B/C in one launch);
#   also the new results/bench_e2e_latest.json.
# profile (~6 min): device time per kernel and per model line at batch 64 and 1 with the new
#   tiles, plus each variant's optimized HLO and per-instance kernel times (--hlo_dir), to
#   trace the quantized path's extra XLA copies and concatenations (memcpy32_post 0.92 vs
#   0.25 ms, input_concatenate_fusion 0.66 vs 0.02 ms at batch 64, session 29) offline.
# ab (~9 min): the tile rule on this card (it was swept on an H100), session 30's int4 unpack
#   (one elementwise pass instead of the interleaving stack) and the linear-input fusions off
#   (session 30 added in_proj's RMSNorm formed in act_quant, producers.RMSNormed, to the
#   direction mean session 26 timed at -0.46 / -0.56 ms), batch 64 and 1.
# dsf (~6 min): the same Vim-B cells in two processes, XLA's defaults against
#   --xla_gpu_enable_dynamic_slice_fusion=true. Why: a quantized block's params reach its
#   Pallas kernels as dynamic slices of the blocks' stacked params, one device copy each per
#   block (session 29's profile: memcpy32_post 505 launches per forward against the float
#   path's 121), which at batch 1 is a launch cost; XLA's dynamic-slice fusion can hand a
#   kernel the slice's address instead of a copy.
set -u
. bench/device_env.sh

case ${PART:-grid} in
  grid)
    timeout 540 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b_grid.json \
      2>&1 | quiet | tail -30 ;;
  profile)
    for B in 64 1; do
      timeout 270 python3 bench/profile_e2e.py --model=vim_b --batch=$B \
        --variants=w4a4o8,bf16_pallas_scan --iters=3 --by_source --hlo_dir=$OUT/hlo \
        --out=$OUT/profile_vim_b_b$B.json 2>&1 | quiet | tail -75
      echo "batch $B at $(( $(date +%s) - S )) s"
    done ;;
  ab)
    timeout 540 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_pallas_scan,w4a4o8 --iters=15 --cases=default,gemm_sweep_tiles=0,int4_shift_unpack=0,fuse_linear_inputs=0 \
      --out=$OUT/e2e_vim_b_ab.json 2>&1 | quiet | tail -20 ;;
  dsf)
    for FLAGS in "" "--xla_gpu_enable_dynamic_slice_fusion=true"; do
      XLA_FLAGS="$FLAGS" timeout 270 python3 bench/e2e_latency.py --models=vim_b --batches=1,64 \
        --variants=bf16_pallas_scan,w4a4o8 --iters=15 \
        --out=$OUT/e2e_vim_b_dsf${FLAGS:+_on}.json 2>&1 | quiet | tail -12
      echo "XLA_FLAGS='$FLAGS' at $(( $(date +%s) - S )) s"
    done ;;
esac
echo "total $(( $(date +%s) - S )) s"
