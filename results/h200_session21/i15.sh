#!/bin/bash
# Issue 15 on the card: the act_quant window walked as straight-line code vs the loop.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s)
timeout 150 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_act_quant.py -k "vim_shape" > $OUT/act_quant_gpu_test.txt 2>&1
grep -E "mismatch fraction|passed|failed" $OUT/act_quant_gpu_test.txt | tail -20
echo "i15 tests $(( $(date +%s) - S )) s"
timeout 150 python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_unroll.json 2>&1 | grep -v "^W\|^I" | tail -28
echo "i15 bench $(( $(date +%s) - S )) s"
WIN=$(python3 - <<'PY'
import json, os
try:
  r = json.load(open(os.environ['OUT'] + '/act_quant_unroll.json'))['results']
  print(int(all(e['variants']['triton_sample_packed_unrolled']['ms'] < 0.95 * e['variants']['triton_sample_packed']['ms'] for e in r if e['C'] >= 768)))
except Exception as e:
  print(0)
PY
)
echo "unrolled wins: $WIN"
if [ "$WIN" = 1 ]; then
  for U in 16 0; do
    timeout 170 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_pallas_scan,w4a4o8 \
      --iters=15 --act_quant_unroll_max=$U --out=$OUT/e2e_vim_b_unroll$U.json 2>&1 | grep -v "^W\|^I" | tail -8
    echo "i15 e2e U=$U $(( $(date +%s) - S )) s"
  done
fi
