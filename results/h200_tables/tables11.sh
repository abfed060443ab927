#!/bin/bash
# usage: bash .gpu/tables11.sh MODEL MAX_WALL_S -- one testbed's paper-size table as three concurrent
# processes on one GPU, grouped by preset so runs sharing a program share its compile (resumable).
set -u
m=$1; T=$2
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.28 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
mkdir -p workdir/logs $OUT/$m
C="--config=configs/$m.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.quant.report_images=0 --workdir=workdir/tables/$m"
P() {  # log runs
  timeout $T python3 main.py $C --config.pipeline.runs=$2 >> workdir/logs/$m.$1.log 2>&1
  echo "$m $1 rc=$? $(date -u +%T)" >> workdir/logs/status.txt
}
G=ouromamba:w8a8:gen,ouromamba:w4a8:gen,ouromamba:w4a4:gen,ouromamba:w4a4_alog:gen,ouromamba:w4a4_ssm8:gen
A=ouromamba:w8a8:noise,ouromamba:w8a8:real,ouromamba:w4a8:noise,ouromamba:w4a8:real,rtn:w8a8:real,ptq4vm:w8a8:real,rtn:w4a8:real,ptq4vm:w4a8:real
B=ouromamba:w4a4:noise,ouromamba:w4a4:real,ouromamba:w4a4_alog:noise,ouromamba:w4a4_alog:real,ouromamba:w4a4_ssm8:noise,ouromamba:w4a4_ssm8:real,rtn:w4a4:real,ptq4vm:w4a4:real
P gen $G & sleep 20; P a $A & P b $B &
wait
date -u
timeout 60 python3 main.py $C >> workdir/logs/$m.table.log 2>&1; echo "$m table rc=$?" >> workdir/logs/status.txt
cp workdir/logs/$m.*.log workdir/tables/$m/ 2>/dev/null
tar czf $OUT/$m.tgz -C workdir/tables/$m --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' .
cat workdir/logs/status.txt; date -u; ls -la $OUT; grep -h "top-1\|done in\|Error\|error" workdir/logs/$m.*.log | tail -40
