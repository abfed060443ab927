#!/bin/bash
# B and C quantized inside the Triton scan (session 22, off until timed), for the next card
# (~4 min): its GPU test, then Vim-B W4A4O8 end to end with it and without it (separate
# processes, the float Pallas path as the baseline of the same runs).
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT
# TESTS=0: already run (next_tests_and_study.sh)
[ "${TESTS:-1}" = 1 ] && timeout 150 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_selective_scan_state_quant.py > $OUT/scan_state_quant_gpu_tests.txt 2>&1
echo "tests rc=$? $(( $(date +%s) - S )) s"; grep -E "rel err|passed|failed" $OUT/scan_state_quant_gpu_tests.txt | tail -4
for Q in 0 1; do
  timeout 170 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_pallas_scan,w4a4o8 \
    --iters=15 --scan_state_quant=$Q --out=$OUT/e2e_vim_b_scan_state_quant$Q.json 2>&1 | grep -v "^W\|^I" | tail -6
done
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf scan_state_quant.tgz *.json *.txt 2>/dev/null; rm -f *.json *.txt)
