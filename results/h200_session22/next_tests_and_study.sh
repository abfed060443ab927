#!/bin/bash
# usage (the next session's first call): bash results/h200_session22/next_tests_and_study.sh
# Issue 19's last cell (positives K = 16 seed 0) under MPS in the background while every GPU test
# of the kernels still untimed runs in the foreground (correctness only, so sharing the card
# costs nothing but time; one pytest per test file part, each under its own timeout). The timed
# checks then run alone, without their tests: TESTS=0 CHECK=<name> bash s22.sh.
# Carry .whl and .data (cifar10/test.tar.gz). Returns: studies.tgz, logs.tgz, gpu_tests.tgz.
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT/tests
# one MPS daemon for the study and the tests (resume.sh finds it running and keeps it), so the
# tests are MPS clients too, whatever the card's compute mode
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
command -v nvidia-cuda-mps-control >/dev/null && { pgrep -x nvidia-cuda-mps > /dev/null || nvidia-cuda-mps-control -d; }
( bash results/studies_h200_gen_changing/resume.sh ${STUDY_T:-470} positives:1 > $OUT/tests/study.txt 2>&1 ) &
STUDY=$!
# the tests grow their memory instead of taking 75 % of the card from the study
export XLA_PYTHON_CLIENT_PREALLOCATE=false
for K in act_quant:kernel_matches_canonical_at_vim act_quant:asymmetric_kernel \
         act_quant:dequantized_matches selective_scan_state_quant:gpu patched_readout:gpu; do
  f=${K%%:*}; k=${K#*:}
  timeout 150 python3 -m pytest -o addopts="" -q -s -m gpu -k $k tests/kernels_pallas/test_$f.py >> $OUT/tests/$f.txt 2>&1
  echo "$K rc=$? at $(( $(date +%s) - START )) s" | tee -a $OUT/tests/$f.txt
  grep -E "rel err|mismatch fraction|passed|failed" $OUT/tests/$f.txt | tail -3
done
wait $STUDY
tail -8 $OUT/tests/study.txt
(cd $OUT/tests && tar czf ../gpu_tests.tgz *.txt) && rm -rf $OUT/tests
echo "call took $(( $(date +%s) - START )) s"
