#!/bin/bash
# usage: [CALL=seconds of the call, default 600] bash .gpu/s21.sh STUDY:PARTS...
# The readout's GPU test and Gen profile (first call on a machine), then the studies for the rest.
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT workdir
if [ ! -f workdir/readout_checked ]; then
  timeout 200 python3 -m pytest -o addopts="" -q -m gpu tests/kernels_pallas/test_patched_readout.py > $OUT/readout_gpu_test.txt 2>&1
  rc=$?; tail -15 $OUT/readout_gpu_test.txt
  if [ $rc = 0 ]; then
    echo ok > workdir/readout_checked
    timeout 150 python3 bench/gen_bench.py --cases=vim_t_cifar10 --images_per_step=128 --steps=10 \
      --nobaseline --profile=5 --out=$OUT/gen_profile_s21.json 2>&1 | grep -v "^W\|^I" | tail -25
  else
    echo xla > workdir/readout_checked
  fi
fi
if [ -f .gpu/i15.sh ] && [ ! -f workdir/i15_done ]; then
  touch workdir/i15_done; bash .gpu/i15.sh
fi
[ "$(cat workdir/readout_checked)" = xla ] && export EXTRA="--config.gen.readout_implementation=xla" && echo "READOUT FALLBACK xla"
T=$((${CALL:-600} - 20 - $(date +%s) + START - 75))
echo "study T=$T"
[ $T -lt 60 ] && T=5   # too little left: only the reports and the tar
bash results/studies_h200_gen_changing/resume.sh $T "$@"
echo "call took $(( $(date +%s) - START )) s"
