"""benchmarks/gpu_check.sh and its summary: a tiny check runs on the CPU, and the summary reads a finished run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SUMMARY = REPO / "benchmarks" / "gpu_check_summary.py"


FAKE_SMI = """#!/bin/sh
# nvidia-smi as the script calls it, for a GPU at 55% and 1,234 MiB (a CPU machine has none to ask)
case "$*" in
  -L) echo "GPU 0: Test GPU (UUID: GPU-test)" ;;
  *--query-gpu=name,*) echo "Test GPU, 1000 MiB, 1.0" ;;
  *--query-gpu=index,*) echo "0, 55, 1234" ;;
  *) echo "unexpected query" ;;
esac
"""


@pytest.mark.slow
def test_the_script_runs_a_tiny_check_on_the_cpu(tmp_path: Path) -> None:
    """The whole script: tool check, sampler, ``ensemble run --preset best`` (tiny settings), summary, copies."""
    import os

    from conftest import TINY_CNN_SPACE, write_dataset

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    overrides = {"space": str(space), "cnn_trials": 1, "plan": None, "baselines": "", "baseline_trials": 1,
                 "top_k": 1, "tta": "none", "refit_full": False, "trials_per_device": 1,
                 "baseline_cores": 1}  # fmt: skip
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        **os.environ, "PATH": f"{smi.parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "PYTHON": sys.executable,
        "USE_WHEELS": "0", "KERAS_BACKEND": "tensorflow", "ENSEMBLE_DATA": str(write_dataset(tmp_path / "d", 300, 40)),
        "ENSEMBLE_RUNS": str(runs), "ENSEMBLE_CACHE": str(tmp_path / "cache"), "OUT": str(out), "RUN_NAME": "cpu",
        "BUDGET": "20m", "ENSEMBLE_RUN_OVERRIDES": json.dumps(overrides),  # the one CNN trial is never cut short
    }  # fmt: skip
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("ensemble run --preset best --time-budget 20m (KERAS_BACKEND=tensorflow): exit code 0")
    final = json.loads((runs / "cpu" / "report" / "summary.json").read_text())
    assert f"final model: {final['final_model']}, holdout accuracy {final['holdout_accuracy']:.4f}" in summary
    assert (
        "CNN trials: 1 completed" in summary and "tensorflow/cpu" in summary
    )  # a listed GPU's slot, but TensorFlow saw none
    assert "GPU utilization during the search: mean 55%" in summary and "1,234 MiB" in summary
    samples = (out / "gpu_samples.csv").read_text().splitlines()
    assert samples and all(line.split(",", 1)[1] == "0, 55, 1234" for line in samples)  # one line a second
    assert {"run.log", "report.md", "leaderboard.csv", "stages.json"} <= {p.name for p in out.iterdir()}


def _fake_run(root: Path, search_end: float) -> None:
    (root / "report").mkdir(parents=True)
    board = [
        {"rank": 1, "model": "ensemble", "kind": "ensemble", "holdout_accuracy": 0.9971, "val_accuracy": 0.9969},
        {"rank": 2, "model": "cnn-trial-0003", "kind": "cnn", "holdout_accuracy": 0.9962, "val_accuracy": 0.9950},
        {"rank": 3, "model": "cnn-trial-0001", "kind": "cnn", "holdout_accuracy": 0.9955, "val_accuracy": 0.9957},
    ]
    summary = {"final_model": "ensemble", "holdout_accuracy": 0.9971, "leaderboard": board}
    (root / "report" / "summary.json").write_text(json.dumps(summary))
    finished = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(search_end))
    stages = {"stages": {
        "cnn_search": {"done": True, "seconds": 100.0, "finished": finished, "plan": [{"at_once": 1}, {"at_once": 4}]},
        "build": {"done": True, "seconds": 12.5, "finished": finished},
    }}  # fmt: skip
    (root / "stages.json").write_text(json.dumps(stages))
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    study = optuna.create_study(study_name="cnn", storage=storage, direction="maximize")
    for overhead in (2.0, 4.0):
        trial = study.ask()
        for k, v in {"overhead_seconds": overhead, "trial_seconds": 10.0, "backend": "jax", "device": "gpu",
                     "recent_images_per_second": 200_000.0}.items():  # fmt: skip
            trial.set_user_attr(k, v)
        study.tell(trial, 0.99)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)


def _summary(root: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, str(SUMMARY), str(root), *extra], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_summary_reads_a_finished_run(tmp_path: Path) -> None:
    end = time.time()
    _fake_run(tmp_path / "run", end)
    samples = tmp_path / "gpu.csv"
    rows = [(end - 500, 0, 10), (end - 50, 60, 900), (end - 40, 80, 1200), (end + 100, 5, 10)]  # two in the search
    samples.write_text("".join(f"{t:.3f},{u}, {m}\n" for t, u, m in rows) + "garbage line\n")
    out = _summary(tmp_path / "run", "--gpu-samples", str(samples))
    assert "final model: ensemble, holdout accuracy 0.9971" in out
    assert "best single CNN (by validation): cnn-trial-0001, holdout accuracy 0.9955" in out
    assert "CNN trials: 2 completed" in out and "jax/gpu" in out
    assert "per-trial overhead: median 3.0s" in out
    assert "GPU utilization during the search: mean 70%" in out and "1,200 MiB (2 samples)" in out
    assert "CNN trials at once: 1, 4" in out and "stage build" in out


def test_the_summary_gives_each_gpus_utilization(tmp_path: Path) -> None:
    end = time.time()
    _fake_run(tmp_path / "run", end)
    samples = tmp_path / "gpu.csv"
    rows = [(end - 50, 0, 90, 900), (end - 50, 1, 30, 500), (end - 40, 0, 70, 1000), (end - 40, 1, 50, 600)]
    samples.write_text("".join(f"{t:.3f},{g}, {u}, {m}\n" for t, g, u, m in rows))
    out = _summary(tmp_path / "run", "--gpu-samples", str(samples))
    assert "GPU utilization during the search: mean 60%" in out and "(4 samples)" in out
    assert "  GPU 0: mean 80%, median 80%, max memory 1,000 MiB (2 samples)" in out
    assert "  GPU 1: mean 40%, median 40%, max memory 600 MiB (2 samples)" in out


def test_without_nvidia_smi_the_utilization_is_not_measured(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", time.time())
    empty = tmp_path / "gpu.csv"
    empty.write_text("")
    assert "not measured" in _summary(tmp_path / "run", "--gpu-samples", str(empty))
    assert "holdout: no report" in _summary(tmp_path / "nothing")
