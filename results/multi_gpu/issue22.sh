#!/bin/bash
# Issue 22's runs, for the first session lent a kind with several GPUs (nvidia-h100-x4/-x8,
# nvidia-h200-x2/-x4/-x8). One call per PART, in this order, carrying .whl and .data:
#   PART=gen|images|eval|table bash results/multi_gpu/issue22.sh
# .data must hold cifar10/{test,train}.tar.gz and imagenet_val_300/imagenet_val_300.tar.gz
# (copied from ../shared/data; ignored by git). Results land in $OUT (JSON per step, and
# summary lines that compare.py prints); work folders in .multi/ (ignored), which the later
# PARTs of a warm machine reuse.
#   gen    (~6 min on 8 GPUs): Gen step of Vim-S 224 (bf16, no remat, random weights) at 32
#          images per GPU on 1, 2, 4, 8 GPUs (weak scaling: step time per GPU count), then the
#          paper's 128 images x 1000 iterations on all GPUs, timed (gen_bench --full_run).
#   images (~3 min): the same Gen (32 images x 30 iterations) three ways: one process on all
#          GPUs, one process per GPU (jax.distributed on 127.0.0.1), one process on one GPU;
#          compare.py says whether the synthetic images and losses agree.
#   eval   (~8 min): a W4A4 quantized Vim-B (seeded random weights written by mode convert,
#          noise calibration, no reconstruction epochs) evaluated in integer mode on the 300
#          ImageNet images by one process on one GPU, one process on all GPUs and one process
#          per GPU: throughput and identical top-1 / top-5 (near 0 with random weights, so a
#          weak check; the table part compares real accuracies).
#   table  (two calls: TABLE_GPUS=all, then TABLE_GPUS=1): the testbed's 21-run table at demo
#          size, spread over the GPUs by the pipeline's workers, then on one GPU; compare.py
#          says whether the two reports agree. A call stopped by its limit resumes where it
#          was when repeated (finished runs are kept): add up the calls' times in wall.txt.
# SMOKE=1 runs every PART at toy sizes on this machine's CPU with forced host devices: it checks
# the commands, and none of its numbers is a result.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
OUT=${OUT:-/tmp/issue22_out}
mkdir -p "$OUT" .multi
if [ -n "${SMOKE:-}" ]; then
  GPUS=4
  export JAX_PLATFORMS=cpu
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
  GPUS=$(nvidia-smi -L | wc -l)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
fi
export PYTHONPATH=${PYTHONPATH:-.}
S=$(date +%s)
quiet() { grep -v "^W\|^I\|WARNING"; }

# `on N CMD...`: CMD on the first N devices (GPUs; SMOKE: N forced CPU devices).
on() {
  local n=$1; shift
  if [ -n "${SMOKE:-}" ]; then
    XLA_FLAGS=--xla_force_host_platform_device_count=$n "$@"
  else
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) "$@"
  fi
}
# `on_one I CMD...`: CMD on device I alone (one process per GPU).
on_one() {
  local i=$1; shift
  if [ -n "${SMOKE:-}" ]; then
    XLA_FLAGS=--xla_force_host_platform_device_count=1 "$@"
  else
    CUDA_VISIBLE_DEVICES=$i "$@"
  fi
}
# `processes P WORKDIR ARGS...`: main.py ARGS in P processes of one device each, joined by the
# distributed runtime; their logs in WORKDIR.log.<i>.
processes() {
  local p=$1 workdir=$2; shift 2
  local port=$((12000 + RANDOM % 20000)) pids=() rc=0
  for i in $(seq 0 $((p - 1))); do
    on_one $i python3 main.py "$@" --workdir="$workdir" \
      --config.distributed.coordinator_address=127.0.0.1:$port \
      --config.distributed.num_processes=$p --config.distributed.process_id=$i \
      > "$workdir.log.$i" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait $pid || rc=1; done
  return $rc
}
# `random_weights CONFIG`: prints the path of a seeded random-weights checkpoint of CONFIG's
# model, written once by mode convert (Gen and quantization refuse to invent weights).
random_weights() {
  local path=.multi/$(basename "$1" .py)_random.safetensors
  [ -f "$path" ] || on 1 python3 main.py --config="$1" --config.mode=convert \
    --config.convert.input=random --config.convert.output="$path" --workdir=.multi/convert \
    > "$path.log" 2>&1 || { tail -15 "$path.log" >&2; exit 1; }
  echo "$path"
}
timed() {  # `timed NAME LOG CMD...`: CMD (output to LOG), then "NAME: S s" into $OUT/wall.txt
  local name=$1 log=$2 t0 rc; shift 2
  t0=$(date +%s.%N)
  "$@" > "$log" 2>&1; rc=$?
  echo "$name: $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (exit $rc)" \
    | tee -a "$OUT/wall.txt"
  [ $rc -eq 0 ] || tail -15 "$log"
  return $rc
}

case ${PART:-gen} in
  gen)
    if [ -n "${SMOKE:-}" ]; then
      size=(--smoke) full=(--full_images=8 --full_iterations=3); per_gpu=2
    else
      size=(--cases=vim_s_224 --dtype=bfloat16 --noremat --steps=10) full=(); per_gpu=32
    fi
    for n in 1 2 4 8; do
      [ $n -le $GPUS ] || break
      on $n timeout 170 python3 bench/gen_bench.py "${size[@]}" \
        --images_per_step=$((per_gpu * n)) --nobaseline --out=$OUT/gen_weak_${n}dev.json 2>&1 \
        | quiet | tail -4
      echo "weak scaling, $n devices, at $(( $(date +%s) - S )) s"
    done
    on $GPUS timeout 330 python3 bench/gen_bench.py "${size[@]}" --images_per_step=128 \
      --nobaseline --full_run "${full[@]}" --out=$OUT/gen_full_${GPUS}dev.json 2>&1 \
      | quiet | tail -6
    python3 results/multi_gpu/compare.py gen_scaling $OUT/gen_weak_*dev.json | tee $OUT/gen_scaling.txt ;;
  images)
    if [ -n "${SMOKE:-}" ]; then
      gen=(--config=configs/vim_t_cifar10.py --config.model.checkpoint=bundled
           --config.gen.num_images=4 --config.gen.iterations=2 --config.gen.images_per_step=4)
    else
      weights=$(random_weights configs/vim_s.py) || exit 1
      gen=(--config=configs/vim_s.py --config.model.checkpoint=$weights
           --config.model.dtype=bfloat16
           --config.gen.remat=False --config.gen.num_images=32 --config.gen.iterations=30
           --config.gen.images_per_step=32)
    fi
    gen+=(--config.mode=generate --config.gen.quality_check=False)
    rm -rf .multi/gen_*
    timed "gen, one process on $GPUS devices" .multi/gen_all.log on $GPUS python3 main.py \
      "${gen[@]}" --workdir=.multi/gen_all
    timed "gen, $GPUS processes of one device" .multi/gen_procs.log processes $GPUS \
      .multi/gen_procs "${gen[@]}"
    timed "gen, one process on one device" .multi/gen_one.log on 1 python3 main.py "${gen[@]}" \
      --workdir=.multi/gen_one
    python3 results/multi_gpu/compare.py images .multi/gen_all .multi/gen_procs .multi/gen_one \
      | tee $OUT/gen_images.txt ;;
  eval)
    if [ -n "${SMOKE:-}" ]; then
      config=configs/vim_t_cifar10.py
      data=(--config.data.data_dir=.data/cifar10 --config.data.eval_images=64
            --config.data.eval_batch_size=8)
    else
      config=configs/vim_b.py
      data=(--config.data.data_dir=.data/imagenet_val_300 --config.data.eval_images=0
            --config.data.eval_batch_size=32)
    fi
    weights=$(random_weights $config) || exit 1
    model=(--config=$config --config.model.checkpoint=$weights)
    q=.multi/vimb_quant
    # OuroMamba's W4A4 quantizers (dynamic int8 outliers) with initial scales, no epochs
    run=ouromamba_w4a4_noise
    [ -d $q/quant/$run/quantized ] || timed "quantize" $q.log on 1 python3 main.py \
      "${model[@]}" --config.mode=quantize --config.quant.preset=w4a4 \
      --config.quant.calib_source=noise --config.quant.calib_images=8 --config.quant.epochs=0 \
      --workdir=$q || exit 1
    ev=("${model[@]}" "${data[@]}" --config.mode=evaluate --config.eval.quantized_mode=int
        --config.eval.quantized_checkpoint=$q/quant/$run/quantized)
    rm -rf .multi/eval_*
    timed "eval, one process on one device" .multi/eval_one.log on 1 python3 main.py \
      "${ev[@]}" --workdir=.multi/eval_one
    timed "eval, one process on $GPUS devices" .multi/eval_all.log on $GPUS python3 main.py \
      "${ev[@]}" --workdir=.multi/eval_all
    timed "eval, $GPUS processes of one device" .multi/eval_procs.log processes $GPUS \
      .multi/eval_procs "${ev[@]}"
    python3 results/multi_gpu/compare.py evals .multi/eval_one .multi/eval_all .multi/eval_procs \
      | tee $OUT/eval.txt ;;
  table)
    n=${TABLE_GPUS:-all}; [ "$n" = all ] && n=$GPUS
    # No compilation cache: neither call may reuse what the other compiled.
    table=(--config=configs/vim_t_cifar10.py --config.model.checkpoint=bundled
           --config.data.data_dir=.data/cifar10 --config.compilation_cache=)
    if [ -n "${SMOKE:-}" ]; then  # forced CPU devices are no GPUs: ask for the workers
      table+=(--config.pipeline.runs=rtn:w4a4:noise,rtn:w8a8:noise --config.data.eval_images=32
              --config.gen.num_images=4 --config.gen.iterations=2 --config.pipeline.workers=$n)
    else
      table+=(--config.pipeline.runs=table)
    fi
    timed "table on $n devices" .multi/table_$n.log on $n timeout 560 python3 main.py \
      "${table[@]}" --workdir=.multi/table_$n
    tail -25 .multi/table_$n/reports/accuracy.md
    cp .multi/table_$n/reports/accuracy.json $OUT/table_${n}dev.json
    if [ -f .multi/table_$GPUS/reports/accuracy.json ] && [ -f .multi/table_1/reports/accuracy.json ]; then
      python3 results/multi_gpu/compare.py reports .multi/table_$GPUS .multi/table_1 \
        | tee $OUT/table.txt
    fi ;;
esac
echo "total $(( $(date +%s) - S )) s"
