# The session's last call (478 s, after studies15.sh finished five studies on the warm machine):
# the three Gen-changing studies, all three seeds, stopped by the time limit (partial).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.25 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=/tmp/site:.
mkdir -p $OUT
C="--config=configs/vim_t_cifar10.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --workdir=workdir/studies --config.mode=study --config.quant.report_images=8"
for s in gen_loss neighbourhood positives; do (timeout 470 python3 main.py $C --config.study.name=$s >> workdir/logs/study.$s.log 2>&1; echo "$s rc=$? $(date -u +%T)" >> workdir/logs/status.txt) & sleep 2; done
wait
tar czf $OUT/studies3.tgz -C workdir/studies --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='images' --exclude='*.npz' study/gen_loss study/neighbourhood study/positives
for s in gen_loss neighbourhood positives; do gzip -c workdir/logs/study.$s.log > $OUT/study.$s.log.gz; done
