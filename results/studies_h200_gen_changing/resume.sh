#!/bin/bash
# usage: bash results/studies_h200_gen_changing/resume.sh T STUDY:PARTS...
# Issue 19's Gen-changing studies at paper size on the Vim testbed, resumed from the cells
# finished so far: their cell.json records (this folder's study/) are copied into the workdir,
# so the study mode reads them instead of running them again. Each study is split over PARTS
# processes (study.part) on one GPU under MPS, one workdir, one Gen store; T (seconds) bounds the
# processes (SIGTERM at T: Gen checkpoints its step and exits; SIGKILL 20 s later), so keep
# T <= ~520 for a 600 s call. A study whose parts all finished is collected
# (seconds: every cell is read from its record), the others get a partial report. Carry .whl (ml_collections) and .data/cifar10/
# test.tar.gz (the train split is not needed and would not fit the 64 MiB beside the repo).
# Returned: studies.tgz (every cell's records and reports: unpack it over this folder's study/
# to keep what the call finished) and logs.tgz. EXTRA: more main.py flags (e.g. a readout implementation).
set -u
T=$1; shift
HERE=results/studies_h200_gen_changing
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git log --oneline -1 2>/dev/null
W=workdir/s21
mkdir -p $W/logs $W/study workdir/xla $OUT
cp -rn $HERE/study/. $W/study/
C="${EXTRA:-} --config=configs/vim_t_cifar10.py --config.pipeline.full=True --config.gen.images_per_step=128 --config.gen.remat=True --config.data.data_dir=.data/cifar10 --config.data.use_tfds=False --config.compilation_cache=workdir/xla --config.mode=study --config.quant.report_images=8 --workdir=$W"
n=0; for sp in "$@"; do n=$((n + ${sp#*:})); done
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9/$n, 3))")
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  pgrep -x nvidia-cuda-mps > /dev/null || nvidia-cuda-mps-control -d
  pgrep -x nvidia-cuda-mps > /dev/null && echo "MPS on" || echo "MPS not running"
fi
echo "processes=$n mem_fraction=$XLA_PYTHON_CLIENT_MEM_FRACTION"
( while sleep 30; do echo "$(date -u +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done ) >> $W/logs/gpu_util.txt &
UTIL=$!
pids=()
for sp in "$@"; do
  s=${sp%:*}; p=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  for i in $(seq 0 $((p-1))); do
    grep -q "^$s $i/$p rc=0" $W/logs/status.txt 2>/dev/null && continue
    ( timeout -k 20 $T python3 main.py $C --config.study.name=$s --config.study.part=$i/$p >> $W/logs/$s.$i.log 2>&1
      echo "$s $i/$p rc=$? $(date -u +%T)" >> $W/logs/status.txt ) &
    pids+=($!)
    sleep 2
  done
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
kill $UTIL
for sp in "$@"; do
  s=${sp%:*}; p=${sp#*:}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null && continue
  [ $(grep -c "^$s [0-9]*/$p rc=0" $W/logs/status.txt) -ge $p ] || continue
  timeout 60 python3 main.py $C --config.study.name=$s >> $W/logs/$s.collect.log 2>&1 \
    && echo "$s collected $(date -u +%T)" >> $W/logs/status.txt
done
for sp in "$@"; do   # the studies not finished: a partial report of their recorded cells
  s=${sp%:*}
  grep -q "^$s collected" $W/logs/status.txt 2>/dev/null || \
    timeout 60 python3 main.py $C --config.study.name=$s --config.study.report_only=True >> $W/logs/$s.report.log 2>&1
done
date -u
tar czf $OUT/studies.tgz -C $W/study --exclude='gen' --exclude='quantized' --exclude='*checkpoint*' --exclude='*.tmp*' --exclude='*.npz' --exclude='images' --exclude='outliers.json' --exclude='layers.json' --exclude='quant_report.json' --exclude='*.png' .
tar czf $OUT/logs.tgz -C $W logs
cat $W/logs/status.txt; find $W/study -name study.md
echo "finished cells: $(find $W/study -name cell.json | wc -l)"
tail -3 $W/logs/gpu_util.txt
