#!/bin/bash
# usage: bash .gpu/s19.sh T STUDY:PARTS... -- issue 19's Gen studies at paper size on the Vim
# testbed, each study split over PARTS processes (study.part) on one GPU, one workdir (shared
# Gen store under its locks, shared XLA cache); resumable on the warm machine. A study whose
# parts all finished is collected (a run without study.part writes its report).
set -u
T=$1; shift
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
W=workdir/s19
mkdir -p $W/logs workdir/xla $OUT
C="--config=configs/vim_t_cifar10.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --config.mode=study --config.quant.report_images=8 --workdir=$W"
for sp in "$@"; do
  s=${sp%:*}; n=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  for i in $(seq 0 $((n-1))); do
    grep -q "^$s $i/$n rc=0" $W/logs/status.txt 2>/dev/null && continue
    ( timeout $T python3 main.py $C --config.study.name=$s --config.study.part=$i/$n >> $W/logs/$s.$i.log 2>&1
      echo "$s $i/$n rc=$? $(date -u +%T)" >> $W/logs/status.txt ) &
    sleep 2
  done
done
wait
for sp in "$@"; do
  s=${sp%:*}; n=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  [ $(grep -c "^$s [0-9]*/$n rc=0" $W/logs/status.txt) -ge $n ] || continue
  ( timeout 120 python3 main.py $C --config.study.name=$s >> $W/logs/$s.collect.log 2>&1 \
    && echo "$s collected $(date -u +%T)" >> $W/logs/status.txt ) &
done
wait
date -u
tar czf $OUT/studies.tgz -C $W/study --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' --exclude='images' --exclude='gen' .
tar czf $OUT/logs.tgz -C $W logs
cat $W/logs/status.txt; find $W/study -name study.md
grep -h "pipeline\] run .*top-1" $W/logs/*.log | wc -l
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
