#!/bin/bash
# usage: [CALL=seconds of the call, default 600] [CHECK=name] bash results/h200_session22/s22.sh [STUDY:PARTS...]
# Session 22's calls: an optional check (CHECK=next_i15a, next_readout, next_i15c or next_i15b:
# results/h200_session21/<name>.sh; next_scan_state_quant: results/h200_session22/<name>.sh;
# outputs as one archive under $OUT/<name>/), then
# issue 19's studies for the rest of the call (resume.sh; carry .whl and .data with only
# cifar10/test.tar.gz). Keep the same STUDY:PARTS on every call: a finished part is not rerun.
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT workdir
if [ -n "${CHECK:-}" ]; then
  SCRIPT=results/h200_session22/$CHECK.sh; [ -f $SCRIPT ] || SCRIPT=results/h200_session21/$CHECK.sh
  OUT=$OUT/$CHECK bash $SCRIPT
  echo "check $CHECK took $(( $(date +%s) - START )) s"
fi
if [ $# -gt 0 ]; then
  T=$((${CALL:-600} - 20 - $(date +%s) + START - 75))
  echo "study T=$T"
  [ $T -lt 60 ] && T=5   # too little left: only the reports and the tar
  bash results/studies_h200_gen_changing/resume.sh $T "$@"
fi
echo "call took $(( $(date +%s) - START )) s"
