#!/bin/bash
# usage: bash .gpu/tables12.sh T -- the missing MambaVision table runs and the whole VMamba table, in
# eight concurrent processes on one GPU grouped by preset, sharing one XLA compilation cache.
set -u
T=$1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.11 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; nproc
mkdir -p workdir/logs workdir/xla
C() { echo "--config=configs/$1.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.quant.report_images=0 --config.compilation_cache=workdir/xla --workdir=workdir/tables/$1"; }
P() {  # model tag runs
  timeout $T python3 main.py $(C $1) --config.pipeline.runs=$3 >> workdir/logs/$1.$2.log 2>&1
  echo "$1 $2 rc=$? $(date -u +%T)" >> workdir/logs/status.txt
}
MV=mambavision_t_cifar10; VM=vmamba_t_cifar10
P $MV gen ouromamba:w4a4_alog:gen,ouromamba:w4a4_ssm8:gen &
P $VM gen ouromamba:w8a8:gen,ouromamba:w4a8:gen,ouromamba:w4a4:gen,ouromamba:w4a4_alog:gen,ouromamba:w4a4_ssm8:gen &
sleep 15
P $MV x ptq4vm:w8a8:real,rtn:w4a8:real,ptq4vm:w4a8:real &
P $MV y ouromamba:w4a4_ssm8:real,rtn:w4a4:real,ptq4vm:w4a4:real &
P $VM a1 ouromamba:w8a8:noise,ouromamba:w8a8:real,ouromamba:w4a8:noise,ouromamba:w4a8:real &
P $VM a2 rtn:w8a8:real,ptq4vm:w8a8:real,rtn:w4a8:real,ptq4vm:w4a8:real &
P $VM b1 ouromamba:w4a4:noise,ouromamba:w4a4:real,ouromamba:w4a4_alog:noise,ouromamba:w4a4_alog:real &
P $VM b2 ouromamba:w4a4_ssm8:noise,ouromamba:w4a4_ssm8:real,rtn:w4a4:real,ptq4vm:w4a4:real &
wait
date -u; nvidia-smi --query-gpu=memory.used --format=csv
for m in $MV $VM; do
  mkdir -p $OUT/$m; cp workdir/logs/$m.*.log workdir/tables/$m/ 2>/dev/null
  tar czf $OUT/$m.tgz -C workdir/tables/$m --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' .
done
cat workdir/logs/status.txt; date -u; ls -la $OUT; grep -h "\] run .*top-1\|Error\|error" workdir/logs/*.log | tail -60
