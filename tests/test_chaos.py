"""The fault-injection benchmark, tiny: two SIGKILLs of ``ensemble run`` and every invariant still holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from ensemble.report.submission import check_submission

pytest.importorskip("keras")
CHAOS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"


def test_two_kills_lose_nothing(tmp_path: Path) -> None:
    work = tmp_path / "chaos"
    cmd = [sys.executable, str(CHAOS), "--tiny", "--kills", "2", "--no-reference", "--workdir", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "kills delivered: 2 of 2" in out.stdout and "[FAIL]" not in out.stdout
    root = work / "runs" / "chaos"
    assert len(check_submission(root / "submission.csv", n_rows=100)) == 100  # the slice's 100 test digits
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    cnn = optuna.load_study(study_name="cnn", storage=storage)
    states = [t.state for t in cnn.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4  # --cnn-trials 4: killed trials did not count
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("data", "cnn_search", "baselines", "build", "report"))
