#!/bin/bash
# Session 16, call 2: bisect the noise cell's GPU-only drop (a6eb90b good 76.90, 5642bc5 bad
# 73.34): 11 first-parent commits between them, one process each, OuroMamba W4A4 + noise.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=0.08
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
date -u; mkdir -p $OUT
for d in .gpu/b/*/; do
  cp ouromamba_jax/assets/vim_t_cifar10.safetensors $d/ouromamba_jax/assets/
  (cd $d && PYTHONPATH=/tmp/site:. timeout ${1:-500} python3 main.py --config=configs/vim_t_cifar10.py \
     --config.pipeline.full=True --config.data.data_dir=../../../.data/cifar10 --config.data.use_tfds=False \
     --workdir=wd --config.pipeline.runs=ouromamba:w4a4:noise > run.log 2>&1; echo "$d rc=$?") &
  sleep 1
done
wait; date -u
for d in .gpu/b/*/; do n=$(basename $d); gzip -c $d/run.log > $OUT/$n.log.gz; echo "$n $(grep -h 'pipeline\] run .*top-1\|run 1/1' $d/run.log | tail -1 | sed 's/.*\]//')"; done
