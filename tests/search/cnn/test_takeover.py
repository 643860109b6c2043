"""A worker paused past the heartbeat's grace (SIGSTOP): its trial is failed and queued again by another
process; resumed (SIGCONT), it drops that trial on one line and goes on. A real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import TINY_CNN_SPACE, stored_cnn_trials, wait_until, write_dataset

from ensemble.search.storage import open_storage

pytestmark = pytest.mark.slow  # end to end: run with -m slow (CI runs both)

pytest.importorskip("keras")


def test_a_paused_search_drops_the_trial_taken_over_and_goes_on(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=8))
    monkeypatch.setenv("ENSEMBLE_HEARTBEAT_S", "1")
    env = {**os.environ, "ENSEMBLE_STORAGE": postgres_url, "ENSEMBLE_RUNS": str(tmp_path / "A" / "runs"),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    args = ["search", "--run", "nap", "--data", str(data), "--space", str(space), "--trials", "1", "--pruner", "none"]
    with (tmp_path / "log.txt").open("w") as log:
        search = subprocess.Popen([sys.executable, "-m", "ensemble", *args], env=env, stdout=log, stderr=log)
        try:
            wait_until(
                lambda: any(
                    t.state.name == "RUNNING" and t.intermediate_values for t in stored_cnn_trials(postgres_url, "nap")
                )
            )
            search.send_signal(signal.SIGSTOP)  # mid-trial: its heartbeat stops
            time.sleep(3.5)  # past the grace period (2 heartbeats)
            other = SimpleNamespace(name="nap", path=lambda *p: tmp_path.joinpath("B", *p))
            storage = open_storage(other, postgres_url, heartbeat=True)  # another process opens the run
            with warnings.catch_warnings():  # or asks for a trial (Optuna's own sweep, experimental)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(optuna.load_study(study_name="cnn", storage=storage))
            assert [t.state.name for t in stored_cnn_trials(postgres_url, "nap")] == ["FAIL", "WAITING"]
        finally:
            search.send_signal(signal.SIGCONT)
        code = search.wait(timeout=300)
    said = (tmp_path / "log.txt").read_text()
    assert code == 0 and "Traceback" not in said, said[-3000:]
    assert len([line for line in said.splitlines() if "dropped" in line]) == 1  # one line about trial 0
    trials = stored_cnn_trials(postgres_url, "nap")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # the retry reaches the target (1)
    assert trials[0].user_attrs.get("killed") and trials[1].system_attrs.get("failed_trial") == 0
