#!/bin/bash
# Issue 15 on the next card, part b (~3 min): Vim-T end to end with the unroll rule (its widths
# are all unrolled) against the loop; Vim-B batch 1 with every width unrolled (20 programs per
# call there: latency-bound).
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT workdir
for U in 16 0; do
  timeout 120 python3 bench/e2e_latency.py --models=vim_t --batches=64,1 --variants=bf16_pallas_scan,w4a4o8 \
    --iters=15 --act_quant_unroll_max=$U --out=$OUT/e2e_vim_t_unroll$U.json 2>&1 | grep -v "^W\|^I" | tail -6
done
timeout 120 python3 bench/e2e_latency.py --models=vim_b --batches=1 --variants=bf16_xla,w4a4o8 \
  --iters=15 --act_quant_unroll_lanes=4096 --out=$OUT/e2e_vim_b_b1_unroll_all.json 2>&1 | grep -v "^W\|^I" | tail -5
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf i15b.tgz *.json *.txt 2>/dev/null; rm -f *.json *.txt)
