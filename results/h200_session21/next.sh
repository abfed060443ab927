#!/bin/bash
# usage: [CALL=seconds of the call, default 600] bash results/h200_session21/next.sh STUDY:PARTS...
# The next session's calls: each call first runs one of session 21's checks not yet run on this
# machine (next_i15a.sh, next_readout.sh, next_i15c.sh, next_i15b.sh, each 3-6 min; outputs as
# one archive under $OUT/<name>/), then issue 19's studies for the rest of the call
# (resume.sh; carry .whl and .data with cifar10/test.tar.gz).
set -u
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
mkdir -p $OUT workdir
for check in next_i15a next_readout next_i15c next_i15b; do
  [ -f workdir/$check.done ] && continue
  touch workdir/$check.done
  OUT=$OUT/$check bash results/h200_session21/$check.sh
  break
done
T=$((${CALL:-600} - 20 - $(date +%s) + START - 75))
echo "study T=$T"
[ $T -lt 60 ] && T=5   # too little left: only the reports and the tar
bash results/studies_h200_session20_partial/resume.sh $T "$@"
echo "call took $(( $(date +%s) - START )) s"
