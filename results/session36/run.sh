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
# Run in session 36: ab, e2e, tests (results/h200_session36/). For the next card:
# ab2 (~6 min): this session's second act_quant change (the reciprocal without div.rn's slow
#   path, the row formed a step after its load: SASS for sm_90, act_quant NOTES session 36),
#   before and after: rebuild .ab_old from d02761f instead (`rm -rf .ab_old && mkdir .ab_old &&
#   git archive d02761f kernels_pallas ouromamba_jax bench configs pyproject.toml tests |
#   tar -x -C .ab_old`, its ouromamba_jax/assets/*.safetensors removed); the GPU tests first
#   (the new reciprocal test among them), then the kernel bench with 15 trials, then Vim-B
#   W4A4O8 at batch 64 in each tree and bf16 + Pallas as the same-run baseline.
# Then the parts of results/h100_session34/run.sh: gemm_sweep (TOKENS=197 first), grid_ts, sweep.
set -u
. bench/device_env.sh
rm -rf /tmp/ab_oldh && cp -r .ab_old /tmp/ab_oldh && cp kernels_pallas/_bench.py /tmp/ab_oldh/kernels_pallas/

in_tree() {  # in_tree old|oldh|new command...: the command in that tree
  local dir=.; [ "$1" = old ] && dir=.ab_old; [ "$1" = oldh ] && dir=/tmp/ab_oldh
  shift; (cd $dir && PYTHONPATH=/tmp/site:. "$@")
}

e2e_before_after() {  # Vim-B W4A4O8 at batch 64 in each tree, bf16 + Pallas in the first
  for tree in old new; do
    variants=w4a4o8; [ $tree = old ] && variants=bf16_pallas_scan,w4a4o8
    in_tree $tree timeout 170 python3 bench/e2e_latency.py --models=vim_b --batches=64 \
      --variants=$variants --iters=15 --out=$OUT/e2e_vim_b_$tree.json 2>&1 | quiet \
      | grep -v compiled | tail -4
  done
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
    e2e_before_after ;;
  ab2)
    timeout 150 python3 -m pytest -q -o addopts= -m gpu tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_act_quant_producers.py 2>&1 | quiet | tail -3
    for tree in old new; do
      echo "== act_quant, tree $tree"
      in_tree $tree timeout 100 python3 -m kernels_pallas.act_quant.bench --trials=15 \
        --out=$OUT/act_quant_$tree.json 2>&1 | quiet | grep -v "^ " | tail -16
    done
    e2e_before_after ;;
  tests)
    timeout 240 python3 -m pytest -q -o addopts= -m gpu tests/kernels_pallas/test_act_quant.py \
      tests/kernels_pallas/test_act_quant_producers.py tests/quant/test_int_linear.py 2>&1 \
      | quiet | tail -3 ;;
esac
echo "total $(( $(date +%s) - S )) s"
