#!/bin/bash
# Issue 15, for the next card (~6-8 min): what session 21 built and could not time.
#   1. every GPU case of act_quant (unrolled asymmetric / dequantized at C = 384 / 16, interleaved)
#   2. the kernel bench: loop vs unrolled vs interleaved vs unpacked (what packing costs)
#   3. Vim-T end to end with the unroll rule (its widths are all unrolled) against the loop;
#      Vim-B batch 1 with every width unrolled
#   4. Vim-B end to end with interleaved packing, if the bench says it wins at C >= 768
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT
timeout 200 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_act_quant.py > $OUT/act_quant_gpu_tests.txt 2>&1
grep -E "passed|failed|Error" $OUT/act_quant_gpu_tests.txt | tail -5; echo "tests $(( $(date +%s) - S )) s"
timeout 200 python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^W\|^I" | tail -40
echo "bench $(( $(date +%s) - S )) s"
for U in 16 0; do
  timeout 120 python3 bench/e2e_latency.py --models=vim_t --batches=64,1 --variants=bf16_pallas_scan,w4a4o8 \
    --iters=15 --act_quant_unroll_max=$U --out=$OUT/e2e_vim_t_unroll$U.json 2>&1 | grep -v "^W\|^I" | tail -6
done
echo "vim_t $(( $(date +%s) - S )) s"
# batch 1: 20 programs per call, latency-bound; every width unrolled against the rule
timeout 120 python3 bench/e2e_latency.py --models=vim_b --batches=1 --variants=bf16_xla,w4a4o8 \
  --iters=15 --act_quant_unroll_lanes=4096 --out=$OUT/e2e_vim_b_b1_unroll_all.json 2>&1 | grep -v "^W\|^I" | tail -5
echo "vim_b b1 $(( $(date +%s) - S )) s"
WIN=$(python3 - <<'PY'
import json, os
try:
  r = json.load(open(os.environ['OUT'] + '/act_quant_bench.json'))['results']
  v = lambda e, n: e['variants'][n]['ms']
  print(int(all(v(e, 'triton_sample_packed_interleaved') < 0.95 * v(e, 'triton_sample_packed') for e in r if e['C'] >= 768)))
except Exception:
  print(0)
PY
)
echo "interleaved wins: $WIN"
if [ "$WIN" = 1 ]; then
  for I in 1 0; do
    timeout 170 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_pallas_scan,w4a4o8 \
      --iters=15 --act_quant_interleave=$I --out=$OUT/e2e_vim_b_interleave$I.json 2>&1 | grep -v "^W\|^I" | tail -6
  done
fi
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf i15.tgz *.json *.txt && rm -f *.json *.txt)
