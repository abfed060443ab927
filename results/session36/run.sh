#!/bin/bash
# Session 36's card plan for issue 15, one PART per call (carry .whl and .ab_old, the tree before
# session 35's act_quant change: `mkdir .ab_old && git archive 2c66673 kernels_pallas
# ouromamba_jax bench configs pyproject.toml | tar -x -C .ab_old`, then remove its
# ouromamba_jax/assets/*.safetensors):
#   PART=ab bash results/session36/run.sh
# ab (~6 min): the act_quant kernel bench (which checks every Triton variant against XLA on the
#   card first) three times: the tree before session 35's change with the old harness (one
#   dispatch per call), the same tree with this session's harness (`_bench.chained`: one
#   dispatch per 8+ calls), and today's tree; then the mixed GEMM at batch 1 with the new
#   harness (session 34 timed every batch-1 GEMM, cuBLAS included, at 35-45 us).
# e2e (~5 min): Vim-B batch 64, before (bf16 + Pallas as the baseline, W4A4O8) and after
#   (W4A4O8), each tree in its own process.
# tests (~3 min): the GPU tests of the act_quant kernel and the int Linear.
# Then the parts of results/h100_session34/run.sh: grid (on an H200), grid_ts, gemm_sweep, sweep.
set -u
. bench/device_env.sh
rm -rf /tmp/ab_oldh && cp -r .ab_old /tmp/ab_oldh && cp kernels_pallas/_bench.py /tmp/ab_oldh/kernels_pallas/

in_tree() {  # in_tree old|oldh|new command...: the command in that tree
  local dir=.; [ "$1" = old ] && dir=.ab_old; [ "$1" = oldh ] && dir=/tmp/ab_oldh
  shift; (cd $dir && PYTHONPATH=/tmp/site:. "$@")
}

case ${PART:-ab} in
  ab)
    which ncu nsys 2>&1 | head -2
    for tree in old oldh new; do
      echo "== act_quant, tree $tree"
      in_tree $tree timeout 120 python3 -m kernels_pallas.act_quant.bench --trials=5 --warps=8 \
        --out=$OUT/act_quant_$tree.json 2>&1 | quiet | grep -v "^ " | tail -16
    done
    echo "== mixed_gemm batch 1, chained"
    timeout 120 python3 -m kernels_pallas.mixed_gemm.bench --shapes=vim_b --tokens=197 \
      --trials=5 --out=$OUT/gemm_b1.json 2>&1 | quiet | grep -v "^ " | tail -12 ;;
  e2e)
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
