#!/bin/bash
# Session 16, call 3: the fixed site search on the GPU (OuroMamba W4A4 + noise, paper size;
# was 73.15 +- 0.20, CPU 76.98, a6eb90b on this card 76.90), then Vim-B latency alone.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
date -u; mkdir -p $OUT workdir/logs
timeout 210 python3 main.py --config=configs/vim_t_cifar10.py --config.pipeline.full=True --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.pipeline.runs=ouromamba:w4a4:noise --config.quant.report_images=0 --workdir=workdir/noise_fixed > workdir/logs/noise_fixed.log 2>&1; echo "rc=$?"
gzip -c workdir/logs/noise_fixed.log > $OUT/noise_fixed.log.gz; grep -h "sites quantized\|block 10/24 loss\|top-1" workdir/logs/noise_fixed.log | sed 's/.*\] //' | tail -5; date -u
timeout 240 python3 bench/e2e_latency.py --models=vim_b --batches=64,1 --variants=bf16_xla,bf16_pallas_scan,w8a8,w4a4o8 --iters=15 --out=$OUT/e2e_vim_b.json > $OUT/e2e_vim_b.log 2>&1
tail -9 $OUT/e2e_vim_b.log; date -u
