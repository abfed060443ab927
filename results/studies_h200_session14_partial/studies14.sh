#!/bin/bash
# usage: bash .gpu/studies14.sh T [STUDY ...] -- issue 19's studies at paper size on the Vim testbed,
# one process per study, one shared workdir (shared Gen under a lock) and XLA cache; resumable.
set -u
T=$1; shift
S=${*:-"k n_refresh"}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.28 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
mkdir -p workdir/logs workdir/xla $OUT
m=vim_t_cifar10
C="--config=configs/$m.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --workdir=workdir/studies"
P() {  # tag, extra flags
  local tag=$1; shift
  timeout $T python3 main.py $C --config.mode=study "$@" >> workdir/logs/study.$tag.log 2>&1
  echo "$tag rc=$? $(date -u +%T)" >> workdir/logs/status.txt
}
P seeds_a --config.quant.report_images=0 --config.study.name=seeds --config.pipeline.runs=ouromamba:w4a4:gen,ouromamba:w4a4:noise,ouromamba:w4a4:real,rtn:w4a4:real,ptq4vm:w4a4:real,ouromamba:w4a4_alog:gen,ouromamba:w4a4_alog:noise &
sleep 5
for s in $S; do P $s --config.quant.report_images=8 --config.study.name=$s & sleep 2; done
wait
date -u
tar czf $OUT/studies.tgz -C workdir/studies --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' --exclude='images' . 
cp workdir/logs/*.log $OUT/ 2>/dev/null
cat workdir/logs/status.txt; find workdir/studies -name study.md | head -20
grep -h "top-1" workdir/logs/*.log | tail -60
