#!/bin/bash
# usage: bash .gpu/s17.sh T STUDIES... -- issue 19's GPU studies re-run with the site-search fix
# (session 17): paper size on the Vim testbed, one process per study (seeds split in two) on one
# GPU, one shared workdir (shared Gen under a lock) and XLA cache; resumable on the warm machine.
set -u
T=$1; shift
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.15 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
mkdir -p workdir/logs workdir/xla workdir/studies_b/study $OUT
[ -e workdir/studies_b/study/gen ] || { mkdir -p workdir/studies/study/gen; ln -s ../../studies/study/gen workdir/studies_b/study/gen; }
m=vim_t_cifar10
C="--config=configs/$m.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla"
P() {  # tag, workdir, extra flags
  local tag=$1 wd=$2; shift 2
  timeout $T python3 main.py $C --workdir=$wd --config.mode=study "$@" >> workdir/logs/study.$tag.log 2>&1
  echo "$tag rc=$? $(date -u +%T)" >> workdir/logs/status.txt
}
for s in "$@"; do
  case $s in
    seeds_a) P seeds_a workdir/studies --config.quant.report_images=0 --config.study.name=seeds --config.pipeline.runs=ouromamba:w4a4:gen,ouromamba:w4a4:noise,ouromamba:w4a4:real,rtn:w4a4:real,ptq4vm:w4a4:real,ouromamba:w4a4_alog:gen,ouromamba:w4a4_alog:noise & ;;
    seeds_b) P seeds_b workdir/studies_b --config.quant.report_images=0 --config.study.name=seeds --config.pipeline.runs=ouromamba:w4a4_alog:real,ouromamba:w4a4_ssm8:gen,ouromamba:w4a4_ssm8:noise,ouromamba:w4a4_ssm8:real,ouromamba:w8a8:gen,ouromamba:w8a8:noise,ouromamba:w8a8:real,ouromamba:w4a8:gen,ouromamba:w4a8:noise,ouromamba:w4a8:real,rtn:w8a8:real,rtn:w4a8:real,ptq4vm:w8a8:real,ptq4vm:w4a8:real & ;;
    *) P $s workdir/studies --config.quant.report_images=8 --config.study.name=$s & ;;
  esac
  sleep 3
done
wait
date -u
for w in studies studies_b; do tar czf $OUT/$w.tgz -C workdir/$w --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' --exclude='images' --exclude='gen' . ; done
for f in workdir/logs/*.log; do gzip -c $f > $OUT/$(basename $f).gz; done
cat workdir/logs/status.txt; find workdir/studies workdir/studies_b -name study.md
grep -h "pipeline\] run .*top-1" workdir/logs/*.log | tail -30
