#!/bin/bash
# Default training on a labeled folder, once per seed, in scratch projects (issue 14, item 5).
#
#   benchmarks/train_seeds.sh DATA VIEWS SEED...      e.g.
#   benchmarks/train_seeds.sh /tmp/r240/data 3 42 1 2  -> /tmp/v3s42, /tmp/v3s1, /tmp/v3s2
#
# DATA holds one folder per class (clothing-small as curated and split in docs/BENCHMARKS.md).
# Each project gets a copy of DATA and this checkout's params.yaml with base.seed = SEED (which
# also moves the split) and train.feature_views = VIEWS, and runs validate, split, train and
# evaluate with /usr/bin/time; every cache starts cold except that nothing is shared between
# projects. Prints each stage's wall time, the feature pass, the best epoch and test metrics.
set -euo pipefail
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false
HERE=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$HERE/.venv/bin:$PATH PYTHONPATH=$HERE/src
DATA=$(cd "$1" && pwd); V=$2; shift 2
for S in "$@"; do
  P=/tmp/v${V}s${S}; rm -rf "$P"; mkdir -p "$P"; cp -r "$DATA" "$P/data"
  sed -e "s/^  seed: [0-9]*/  seed: $S/" -e "s/^  feature_views: [0-9]* /  feature_views: $V /" \
    "$HERE/params.yaml" > "$P/params.yaml"
  cd "$P"
  for st in validate split train evaluate; do
    echo "== $st $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    /usr/bin/time -f "$st wall %e s" visionops $st > $st.log 2>&1 || { echo "FAIL $st"; tail $st.log; exit 1; }
    tail -1 $st.log
  done
  grep -E "best epoch|frozen features: [0-9]" train.log
  python -c "import json; d = json.load(open('artifacts/evaluate/metrics.json')); print('test', {k: round(d[k], 4) for k in ('accuracy', 'macro_f1', 'ece')})"
done
