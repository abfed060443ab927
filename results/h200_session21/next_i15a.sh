#!/bin/bash
# Issue 15 on the next card, part a (~5-6 min): every GPU case of act_quant (unrolled asymmetric /
# dequantized at C = 384 / 16, interleaved), then the kernel bench: loop vs unrolled vs
# interleaved vs unpacked (what packing costs). Parts b and c read its bench from workdir/.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT workdir
timeout 200 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_act_quant.py > $OUT/act_quant_gpu_tests.txt 2>&1
grep -E "passed|failed|Error" $OUT/act_quant_gpu_tests.txt | tail -5; echo "tests $(( $(date +%s) - S )) s"
timeout 240 python3 -m kernels_pallas.act_quant.bench --trials=5 --out=$OUT/act_quant_bench.json 2>&1 | grep -v "^W\|^I" | tail -40
cp $OUT/act_quant_bench.json workdir/ 2>/dev/null
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf i15a.tgz *.json *.txt 2>/dev/null; rm -f *.json *.txt)
