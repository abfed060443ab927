#!/bin/bash
# usage: bash .gpu/studies13.sh T [STUDY ...] -- issue 19's studies at paper size on the Vim testbed,
# one process per study (the seeds study split into three by preset), one shared workdir and XLA
# cache; resumable (rerun the same call on a warm machine: finished runs are skipped).
set -u
T=$1; shift
S=${*:-"calib_size gen_loss n_refresh k neighbourhood positives"}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.135 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
mkdir -p workdir/logs workdir/xla $OUT
m=vim_t_cifar10
C="--config=configs/$m.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.quant.report_images=0 --config.compilation_cache=workdir/xla --workdir=workdir/studies"
P() {  # tag, extra flags
  local tag=$1; shift
  timeout $T python3 main.py $C --config.mode=study "$@" >> workdir/logs/study.$tag.log 2>&1
  echo "$tag rc=$? $(date -u +%T)" >> workdir/logs/status.txt
}
P seeds_a --config.study.name=seeds --config.pipeline.runs=ouromamba:w4a4:gen,ouromamba:w4a4:noise,ouromamba:w4a4:real,rtn:w4a4:real,ptq4vm:w4a4:real,ouromamba:w4a4_alog:gen,ouromamba:w4a4_alog:noise &
sleep 10
for s in $S; do P $s --config.study.name=$s & sleep 2; done
wait
date -u
tar czf $OUT/studies.tgz -C workdir/studies --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' . 
cp workdir/logs/*.log $OUT/ 2>/dev/null
cat workdir/logs/status.txt; find workdir/studies -name study.md | head -20
