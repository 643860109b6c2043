"""benchmarks/gpu_check.sh and its summary: the script parses, and the summary reads a finished run (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SUMMARY = REPO / "benchmarks" / "gpu_check_summary.py"


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


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


def test_without_nvidia_smi_the_utilization_is_not_measured(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", time.time())
    empty = tmp_path / "gpu.csv"
    empty.write_text("")
    assert "not measured" in _summary(tmp_path / "run", "--gpu-samples", str(empty))
    assert "holdout: no report" in _summary(tmp_path / "nothing")
