#!/bin/bash
# Session 16, call 1: the noise cell's GPU-only drop (A/B: associative scan; highest matmul
# precision), the GPU kernel tests, then issue 15's Vim-B latency alone on the card.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
mkdir -p $OUT workdir/logs
m=vim_t_cifar10
C="--config=configs/$m.py --config.pipeline.full=True --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --config.pipeline.runs=ouromamba:w4a4:noise --config.quant.report_images=0"
(XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 330 python3 main.py $C --workdir=workdir/noise_assoc --config.model.scan_implementation=associative > workdir/logs/noise_assoc.log 2>&1; echo "assoc rc=$?") &
sleep 3
(XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 JAX_DEFAULT_MATMUL_PRECISION=highest timeout 330 python3 main.py $C --workdir=workdir/noise_highest > workdir/logs/noise_highest.log 2>&1; echo "highest rc=$?") &
sleep 3
XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 timeout 240 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/kernels_pallas/ 2>&1 | grep -v "^$" | tail -25 | tee $OUT/gpu_tests.log
wait; date -u
for f in workdir/logs/noise_*.log; do gzip -c $f > $OUT/$(basename $f).gz; grep -h "top-1\|block 1[0-2]\b\|block 10 \|loss" $f | tail -12; done
timeout 230 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b.json > $OUT/e2e_vim_b.log 2>&1
tail -12 $OUT/e2e_vim_b.log; date -u
