#!/bin/bash
# usage: [BENCH=1] [REMAT=True|False] bash .gpu/s20.sh T STUDY:PARTS...
# Issue 19's Gen-changing studies at paper size on the Vim testbed, each study split over PARTS
# processes (study.part) on one GPU, one workdir (shared Gen store under its locks, shared XLA
# cache). Resumable: on a warm machine from the workdir; on a fresh one from the finished Gen
# groups a previous call returned (put $OUT/gens_*.tgz into .gpu/gens/ and carry .gpu).
set -u
T=$1; shift
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u
W=workdir/s20
REMAT=${REMAT:-True}
mkdir -p $W/logs $W/study/gen workdir/xla $OUT
for f in .gpu/gens/gens_*.tgz; do [ -f "$f" ] && tar xzf "$f" -C $W/study/gen && echo "restored $f"; done
if [ "${BENCH:-0}" = 1 ]; then
  for r in remat noremat; do
    timeout 150 python3 bench/gen_bench.py --cases=vim_t_cifar10 --images_per_step=128 --steps=20 \
      --nobaseline --$r --out=$OUT/gen_bench_$r.json 2>&1 | grep -v "^W\|^I" | tail -4
  done
  # no remat when it is >= 10 % faster and its peak fits the per-process share (the images do
  # not depend on it: gen.remat is an operational field)
  REMAT=$(python3 - "$@" <<'PY'
import json, sys
n = sum(int(a.split(':')[1]) for a in sys.argv[1:])
try:
  r, nr = (json.load(open(f'{__import__("os").environ["OUT"]}/gen_bench_{x}.json'))['results'][0]
           for x in ('remat', 'noremat'))
  fits = nr['peak_gib'] is not None and nr['peak_gib'] < 0.8 * 139 / n
  print('False' if fits and nr['gen']['img_it_per_s'] > 1.1 * r['gen']['img_it_per_s'] else 'True')
except Exception as e:  # no bench numbers: keep the default
  print('True')
PY
)
fi
C="--config=configs/vim_t_cifar10.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.gen.remat=$REMAT --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --config.mode=study --config.quant.report_images=8 --workdir=$W"
n=0; for sp in "$@"; do n=$((n + ${sp#*:})); done
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9/$n, 3))")
echo "processes=$n mem_fraction=$XLA_PYTHON_CLIENT_MEM_FRACTION remat=$REMAT"
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "MPS on" || echo "MPS failed to start"
else
  echo "no MPS on this image: processes time-slice the GPU"
fi
( while sleep 30; do echo "$(date -u +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done ) >> $W/logs/gpu_util.txt &
UTIL=$!
for sp in "$@"; do
  s=${sp%:*}; p=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  for i in $(seq 0 $((p-1))); do
    grep -q "^$s $i/$p rc=0" $W/logs/status.txt 2>/dev/null && continue
    ( timeout $T python3 main.py $C --config.study.name=$s --config.study.part=$i/$p >> $W/logs/$s.$i.log 2>&1
      echo "$s $i/$p rc=$? $(date -u +%T)" >> $W/logs/status.txt ) &
    sleep 3
  done
done
wait $(jobs -p | grep -v "^$UTIL$") 2>/dev/null
for sp in "$@"; do
  s=${sp%:*}; p=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  [ $(grep -c "^$s [0-9]*/$p rc=0" $W/logs/status.txt) -ge $p ] || continue
  timeout 200 python3 main.py $C --config.study.name=$s >> $W/logs/$s.collect.log 2>&1 \
    && echo "$s collected $(date -u +%T)" >> $W/logs/status.txt
done
kill $UTIL
date -u
# finished Gen groups (no checkpoints, no synthetic.npz: a rerun rebuilds it from the groups),
# packed into files of at most ~14 MB
cd $W/study/gen && k=0; size=0; list=()
for key in $(ls -d */ 2>/dev/null | tr -d /); do
  [ -f $key/gen/synthetic.npz ] || continue
  s=$(du -sk --exclude=checkpoints --exclude=synthetic.npz $key | cut -f1)
  if [ $((size + s)) -gt 14000 ] && [ ${#list[@]} -gt 0 ]; then
    tar czf $OUT/gens_$k.tgz --exclude=checkpoints --exclude=synthetic.npz "${list[@]}"; k=$((k+1)); size=0; list=()
  fi
  list+=($key); size=$((size + s))
done
[ ${#list[@]} -gt 0 ] && tar czf $OUT/gens_$k.tgz --exclude=checkpoints --exclude=synthetic.npz "${list[@]}"
cd - >/dev/null
tar czf $OUT/studies.tgz -C $W/study --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' --exclude='images' --exclude='gen' .
tar czf $OUT/logs.tgz -C $W logs
ls -la $OUT; cat $W/logs/status.txt; find $W/study -name study.md
echo "finished Gens: $(ls $W/study/gen/*/gen/synthetic.npz 2>/dev/null | wc -l)"
grep -h "pipeline\] run .*top-1\|\[eval\] top-1" $W/logs/*.log | wc -l
tail -3 $W/logs/gpu_util.txt
