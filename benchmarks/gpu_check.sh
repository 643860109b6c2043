#!/usr/bin/env bash
# GPU check, for a machine with one or more NVIDIA GPUs and JAX, as lent by the device tool. One run, about 8
#   minutes: `ensemble run --data DATA --preset best --time-budget 7m` with KERAS_BACKEND=jax (every GPU found,
#   or those ENSEMBLE_RUN_OVERRIDES='{"devices": "0"}' names), nvidia-smi sampling each GPU's utilization and
#   memory every second meanwhile; then benchmarks/gpu_check_summary.py prints the holdout accuracy of the
#   final model and of the best single CNN, the CNN trials completed (and on which device), the per-trial
#   overhead, the trials at once, the GPU utilization (all, and per GPU) during the CNN search and each
#   stage's wall time. Everything also lands in $OUT (run.log, gpu_samples.csv, summary.txt, the report).
# THROUGHPUT=1 first runs benchmarks/gpu_throughput.py (about 3 more minutes).
# Expects the Kaggle files in $ENSEMBLE_DATA (default .data; empty: the offline demo digits) and, optionally,
# keras/optuna wheels in .whl/ (carried, not committed). Without nvidia-smi (a CPU machine) it runs all the
# same and reports the GPU utilization as not measured, e.g.
#   ENSEMBLE_DATA= BUDGET=90s KERAS_BACKEND=tensorflow RUN_NAME=cpu-check bash benchmarks/gpu_check.sh
set -u
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false
DATA=${ENSEMBLE_DATA-.data}
OUT=${OUT:-/tmp/gpu_check}
NAME=${RUN_NAME:-gpu-best}
BUDGET=${BUDGET:-7m}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .whl ] && [ "${USE_WHEELS:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
HAVE_SMI=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  HAVE_SMI=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi: not found or no GPU; GPU utilization will not be measured"
fi
$PY - <<'EOF'
import importlib, os
found = []
for name in ("keras", os.environ["KERAS_BACKEND"], "optuna", "sklearn", "xgboost"):
    try:
        found.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # a backend or xgboost that is not installed
        found.append(f"{name}: {type(exc).__name__}")
print(" | ".join(found))
EOF
if [ "${THROUGHPUT:-0}" = 1 ]; then
  timeout "${THROUGHPUT_S:-170}" $PY benchmarks/gpu_throughput.py 2>&1 | grep -v -i warn | tee "$OUT/throughput.txt"
fi
if [ -z "${ENSEMBLE_RUN_OVERRIDES:-}" ] && ! $PY -c "import xgboost" 2>/dev/null; then
  export ENSEMBLE_RUN_OVERRIDES='{"baselines": "logreg,rf,extratrees,knn,svm"}'  # the preset's, less xgboost
  echo "xgboost is not installed: baselines without it"
fi

sample_gpu() {  # one line a second per GPU: epoch seconds, GPU index, utilization %, memory used MiB
  while :; do
    NOW=$(date +%s.%N)
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits | sed "s/^/$NOW,/"
    sleep 1
  done
}
: > "$OUT/gpu_samples.csv"
SAMPLER=
if [ "$HAVE_SMI" = 1 ]; then
  sample_gpu > "$OUT/gpu_samples.csv" 2>/dev/null &
  SAMPLER=$!
fi
DATA_ARGS=()
[ -n "$DATA" ] && DATA_ARGS=(--data "$DATA")
T0=$(date +%s)
timeout "${RUN_S:-500}" $PY -m ensemble run ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --preset best --time-budget "$BUDGET" --name "$NAME" \
  --restart 2>&1 | tee "$OUT/run.log"
RC=${PIPESTATUS[0]}
T1=$(date +%s)
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
RUN_DIR=${ENSEMBLE_RUNS:-runs}/$NAME
{
  echo "ensemble run --preset best --time-budget $BUDGET (KERAS_BACKEND=$KERAS_BACKEND): exit code $RC, $((T1 - T0))s wall"
  $PY benchmarks/gpu_check_summary.py "$RUN_DIR" --gpu-samples "$OUT/gpu_samples.csv"
} 2>&1 | tee "$OUT/summary.txt"
cp "$RUN_DIR/report/report.md" "$RUN_DIR/report/leaderboard.csv" "$RUN_DIR/stages.json" "$OUT/" 2>/dev/null
exit "$RC"
