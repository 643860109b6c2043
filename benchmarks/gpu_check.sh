#!/usr/bin/env bash
# GPU check, for a machine with one NVIDIA GPU and JAX (no TensorFlow), as lent by the device tool:
#   1. training images/s by model, batch size, data placement and precision (benchmarks/gpu_throughput.py);
#   2. `ensemble run --preset best` on the real data with a short time budget (BUDGET, default 5m).
# Expects keras/optuna wheels in .whl/ and the Kaggle files in .data/ (both carried, not committed).
set -u
export PYTHONUNBUFFERED=1 KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false
export ENSEMBLE_DATA=${ENSEMBLE_DATA:-.data}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ] && [ "${USE_WHEELS:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, keras, optuna, sklearn; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__, '| optuna', optuna.__version__, '| sklearn', sklearn.__version__)"
if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  timeout "${THROUGHPUT_S:-170}" python3 benchmarks/gpu_throughput.py 2>&1 | grep -v -i warn | tee "$OUT/throughput.txt"
fi
if [ "${SKIP_RUN:-0}" != 1 ]; then
  export ENSEMBLE_RUN_OVERRIDES=${ENSEMBLE_RUN_OVERRIDES:-'{"baselines": "logreg,knn,svm,extratrees,rf", "baseline_cores": 12}'}
  timeout "${RUN_S:-420}" python3 -m ensemble run --data "$ENSEMBLE_DATA" --preset best --time-budget "${BUDGET:-5m}" \
    --name gpu-best 2>&1 | tee "$OUT/run.log"
  cp runs/gpu-best/report/report.md runs/gpu-best/report/leaderboard.csv "$OUT/" 2>/dev/null
fi
