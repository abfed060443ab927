#!/bin/bash
# Session 35's card plan for issue 15, one PART per call (carry .whl and .ab_old, an ignored copy
# of the tree before the change: `mkdir .ab_old && git archive 2c66673 kernels_pallas
# ouromamba_jax bench configs pyproject.toml | tar -x -C .ab_old`, then remove its
# ouromamba_jax/assets/*.safetensors to keep the carry small):
#   PART=ab bash results/session35/run.sh
# ab (~8 min): act_quant with the outlier state carried as a float `keep` (+inf / 0 per lane)
#   instead of a boolean mask and a symmetric grid's inliers clipped after rounding (SASS for
#   sm_90: the C = 1536 step 543 -> 444 instructions, registers 64 -> 78; Δ's dequantized step
#   579 -> 541 with its float rounding one FRND), before (.ab_old) and
#   after: the kernel bench (which checks every Triton variant against XLA on the card before
#   timing it; also at 8 warps: the registers cost occupancy at 4), then Vim-B W4A4O8 end to
#   end at batch 64 with bf16 + Pallas as the same-run baseline.
# ab_kernel (~3 min): only its kernel bench, for a call with little device time left.
# tests (~3 min): the GPU tests of the act_quant kernel and the int Linear.
# Then the parts of results/h100_session34/run.sh: grid (on an H200), grid_ts, gemm_sweep, sweep.
set -u
. bench/device_env.sh

in_tree() {  # in_tree old|new command...: the command in the tree before / after the change
  local dir=.; [ "$1" = old ] && dir=.ab_old
  shift; (cd $dir && PYTHONPATH=/tmp/site:. "$@")
}

case ${PART:-ab} in
  ab|ab_kernel)
    for tree in old new; do
      in_tree $tree timeout 80 python3 -m kernels_pallas.act_quant.bench --trials=5 --warps=8 \
        --out=$OUT/act_quant_$tree.json 2>&1 | quiet | grep -v "^ " | tail -16
    done
    [ "${PART:-ab}" = ab_kernel ] && exit
    for tree in old new; do
      variants=w4a4o8; [ $tree = old ] && variants=bf16_pallas_scan,w4a4o8
      in_tree $tree timeout 170 python3 bench/e2e_latency.py --models=vim_b --batches=64 \
        --variants=$variants --iters=15 --out=$OUT/e2e_vim_b_$tree.json 2>&1 | quiet \
        | grep -v compiled | tail -4
    done ;;
  tests)
    timeout 240 python3 -m pytest -q -o addopts= -m gpu tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_act_quant_producers.py tests/quant/test_int_linear.py 2>&1 \
      | quiet | tail -3 ;;
esac
echo "total $(( $(date +%s) - S )) s"
