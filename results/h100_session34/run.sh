#!/bin/bash
# Session 34's card plan for issue 15, one PART per call (carry .whl):
#   PART=grid bash results/h100_session34/run.sh
# grid (~6 min): the GPU test of the narrow weights read as stored (x_proj at batch 64), then
#   Vim-B batches 64 and 1 with today's defaults (the block scan unrolled at batch 1 with the
#   Triton scan; x_proj / dt_proj int4 weights read as stored) against the narrow rule off.
# The parts below were not run in session 34 (the device time ran out); the next card's plan:
# grid_ts (~4 min): Vim-T and Vim-S, batches 64 and 1, with today's defaults.
# gemm_sweep (<= 9.5 min; TOKENS="12608" etc. splits it over calls): the mixed GEMM's tile sweep at Vim-B's shapes, batches 64, 16 and 1, with
#   the K-major weights of session 33 (the per-shape tiles were swept on the old layout; x_proj's
#   as-stored gain in session 34 was mostly its tile).
# (Also still to run: `PART=split` of results/h200_session33/run.sh, the scan's time split.)
# sweep (~6 min): issue 15's latency and outlier rate vs n_refresh and k (Fig. 9d), today's
#   defaults (last run in session 26).
set -u
. bench/device_env.sh

case ${PART:-grid} in
  grid)
    timeout 150 python3 -m pytest -q -o addopts= -m gpu tests/kernels_pallas/test_mixed_gemm.py \
      -k weights_as_stored 2>&1 | quiet | tail -3
    timeout 420 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 \
      --cases=default,gemm_narrow_as_stored=0 --out=$OUT/e2e_vim_b_grid.json \
      2>&1 | quiet | grep -v compiled | tail -8 ;;
  grid_ts)
    timeout 560 python3 bench/e2e_latency.py --models=vim_t,vim_s --batches=64,1 \
      --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_ts_grid.json \
      2>&1 | quiet | grep -v compiled | tail -12 ;;
  gemm_sweep)
    for T in ${TOKENS:-12608 3152 197}; do   # batches 64, 16, 1 (TOKENS=... for a part)
      timeout 185 python3 -m kernels_pallas.mixed_gemm.bench --sweep --shapes=vim_b --trials=5 \
        --tokens=$T --out=$OUT/mixed_gemm_sweep_m$T.json 2>&1 | quiet | tail -40
    done ;;
  sweep)
    timeout 560 python3 bench/outlier_sweep.py --model=vim_b --batch=64 --png=$OUT/outlier_sweep_vim_b.png \
      --out=$OUT/outlier_sweep_vim_b.json 2>&1 | quiet | tail -20 ;;
esac
echo "total $(( $(date +%s) - S )) s"
