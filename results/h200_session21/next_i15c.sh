#!/bin/bash
# Issue 15 on the next card, part c (~5 min, only if part a's bench has the interleaved packing
# >= 5 % faster at every C >= 768): Vim-B end to end with it and without it.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT workdir
WIN=$(python3 - <<'PY'
import json
try:
  r = json.load(open('workdir/act_quant_bench.json'))['results']
  v = lambda e, n: e['variants'][n]['ms']
  print(int(all(v(e, 'triton_sample_packed_interleaved') < 0.95 * v(e, 'triton_sample_packed')
                for e in r if e['C'] >= 768)))
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
(cd $OUT && tar czf i15c.tgz *.json *.txt 2>/dev/null; rm -f *.json *.txt)
