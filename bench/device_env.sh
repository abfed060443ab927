# Sourced by the card plans under results/ (`. bench/device_env.sh` from the repo root on the
# device machine): the pure-Python wheels carried in .whl installed aside and on PYTHONPATH, the
# card and driver printed, an MPS daemon (which changes timings) stopped, $OUT made, S the
# start time, and `quiet` dropping absl's W/I log lines.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
git log --oneline -1 2>/dev/null
pgrep -x nvidia-cuda-mps > /dev/null && {
  echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control; sleep 3; }
S=$(date +%s); mkdir -p "$OUT"
quiet() { grep -v "^W\|^I"; }
