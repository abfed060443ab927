#!/bin/bash
# usage: [CALL=seconds of the call, default 600] [CHECK=name] bash results/h200_session22/s22.sh [STUDY:PARTS...]
# Session 22's calls: an optional check (CHECK=next_i15a or next_readout:
# results/h200_session21/<name>.sh; next_scan_state_quant: results/h200_session22/<name>.sh;
# outputs as one archive under $OUT/<name>/), then
# issue 19's studies for the rest of the call (resume.sh; carry .whl and .data with only
# cifar10/test.tar.gz). Keep the same STUDY:PARTS on every call: a finished part is not rerun.
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT workdir
# An MPS daemon left by an earlier call on this warm machine (next_tests_and_study.sh) keeps the
# card from clients outside its pipe directory: session 23's second call found no GPU and timed
# its checks out on the CPU. So quit it, and stop unless jax sees the GPU.
if pgrep -x nvidia-cuda-mps > /dev/null; then
  echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control; sleep 3
  pgrep -x nvidia-cuda-mps > /dev/null && echo "MPS still running" || echo "MPS quit"
fi
gpu_seen() { timeout 90 python3 -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu'" 2>&1 | tail -1; return ${PIPESTATUS[0]}; }
gpu_seen || { export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe; echo "as an MPS client"; gpu_seen; } || { echo "no GPU: stopping"; exit 1; }
# Session 23's last call ran the three checks its earlier calls lost to the MPS daemon, in order.
[ "${CHECK:-}" = next_readout ] && CHECK=next_scan_state_quant,next_i15a,next_readout
for C in $(echo ${CHECK:-} | tr , ' '); do
  SCRIPT=results/h200_session22/$C.sh; [ -f $SCRIPT ] || SCRIPT=results/h200_session21/$C.sh
  OUT=$OUT/$C bash $SCRIPT
  echo "check $C done at $(( $(date +%s) - START )) s"
done
if [ $# -gt 0 ]; then
  T=$((${CALL:-600} - 20 - $(date +%s) + START - 75))
  echo "study T=$T"
  [ $T -lt 60 ] && T=5   # too little left: only the reports and the tar
  bash results/studies_h200_gen_changing/resume.sh $T "$@"
fi
echo "call took $(( $(date +%s) - START )) s"
