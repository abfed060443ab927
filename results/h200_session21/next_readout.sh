#!/bin/bash
# The readout kernels by state index (session 21, off until timed), for the next card (~3 min):
# its GPU test, the kernel bench in both forms, then the testbed's Gen step with and without it
# (separate processes).
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
S=$(date +%s); mkdir -p $OUT
# TESTS=0: already run (results/h200_session22/next_tests_and_study.sh)
[ "${TESTS:-1}" = 1 ] && timeout 150 python3 -m pytest -o addopts="" -q -s -m gpu tests/kernels_pallas/test_patched_readout.py > $OUT/readout_gpu_tests.txt 2>&1
grep -E "rel err|passed|failed" $OUT/readout_gpu_tests.txt | tail -6; echo "tests $(( $(date +%s) - S )) s"
# the kernels alone (testbed, Vim-T/S sizes): today's tiles, then by state at block_d 32 and 64
for V in "--block_d=32" "--block_d=32 --by_state" "--block_d=64 --by_state"; do
  timeout 100 python3 -m kernels_pallas.patched_readout.bench --trials=5 $V \
    --out=$OUT/readout_kernel_$(echo $V | tr -d ' -=').json 2>&1 | grep -v "^W\|^I" | tail -9
done
echo "kernel bench $(( $(date +%s) - S )) s"
for B in noreadout_by_state readout_by_state; do
  timeout 120 python3 bench/gen_bench.py --cases=vim_t_cifar10 --images_per_step=128 --steps=10 \
    --nobaseline --profile=3 --$B --out=$OUT/gen_$B.json 2>&1 | grep -v "^W\|^I" | tail -12
done
echo "total $(( $(date +%s) - S )) s"
# one file back (a call returns at most 8)
(cd $OUT && tar czf readout.tgz *.json *.txt && rm -f *.json *.txt)
