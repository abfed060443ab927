#!/bin/bash
# Issue 15 on the next card, part a (~6-8 min): every GPU case of act_quant (asymmetric (a loop
# since session 22) / dequantized at C = 384 / 16, interleaved), then the kernel bench: loop vs unrolled vs
# interleaved vs unpacked (what packing costs). Parts b and c read its bench from workdir/.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT workdir
# one pytest per GPU test (session 22: one stalled compile used up a single 200 s run);
# TESTS=0: already run (results/h200_session22/next_tests_and_study.sh)
[ "${TESTS:-1}" = 1 ] && for K in "kernel_matches_canonical_at_vim" "asymmetric_kernel" "dequantized_matches"; do
  timeout 100 python3 -m pytest -o addopts="" -q -s -m gpu -k $K tests/kernels_pallas/test_act_quant.py >> $OUT/act_quant_gpu_tests.txt 2>&1
  echo "$K rc=$? at $(( $(date +%s) - S )) s" | tee -a $OUT/act_quant_gpu_tests.txt
done
grep -E "passed|failed|Error" $OUT/act_quant_gpu_tests.txt | tail -5; echo "tests $(( $(date +%s) - S )) s"
timeout 240 python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^W\|^I" | tail -40
cp $OUT/act_quant_bench.json workdir/ 2>/dev/null
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf i15a.tgz *.json *.txt 2>/dev/null; rm -f *.json *.txt)
