"""A database storage through a server restart: a real PostgreSQL server (tests/postgres.py), restarted mid-trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CNN_SPACE, stored_cnn_trials, wait_until, write_dataset
from postgres import restart

from ensemble.search import dbstorage


def _refused() -> Exception:
    """The error SQLAlchemy gives for a database it cannot reach (a real connection attempt)."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine("sqlite:////nonexistent-folder/x.db").connect()
    except Exception as exc:
        return exc
    raise AssertionError("connected to nothing")


def test_a_call_that_fails_for_a_lost_connection_is_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbstorage, "FIRST_WAIT_S", 0.01)
    lost = _refused()
    assert dbstorage.is_disconnect(lost) and not dbstorage.is_disconnect(ValueError("bad value"))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise optuna.exceptions.StorageInternalError("commit failed") from lost  # as RDBStorage wraps it
        return "done"

    assert dbstorage.retrying(flaky) == "done" and len(calls) == 3
    monkeypatch.setattr(dbstorage, "RECONNECT_S", 0.0)  # out of time: the error goes up
    calls.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        dbstorage.retrying(flaky)
    with pytest.raises(ValueError):  # not a lost connection: never made again
        dbstorage.retrying(lambda: calls.append(1) or int("x"))


@pytest.mark.slow
def test_a_search_goes_on_through_a_database_restart_mid_trial(postgres_url: str, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=8))
    env = {**os.environ, "ENSEMBLE_STORAGE": postgres_url, "ENSEMBLE_RUNS": str(tmp_path / "runs"),
           "ENSEMBLE_HEARTBEAT_S": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    args = ["search", "--run", "boot", "--data", str(data), "--space", str(space), "--trials", "1", "--pruner", "none"]
    with (tmp_path / "log.txt").open("w") as log:
        search = subprocess.Popen([sys.executable, "-m", "ensemble", *args], env=env, stdout=log, stderr=log)
        wait_until(
            lambda: any(
                t.state.name == "RUNNING" and t.intermediate_values for t in stored_cnn_trials(postgres_url, "boot")
            )
        )
        restart(postgres_url)  # every connection of the search (and of its heartbeat) is cut mid-trial
        code = search.wait(timeout=300)
    said = (tmp_path / "log.txt").read_text()
    assert code == 0 and "Traceback" not in said, said[-3000:]  # the heartbeat thread did not die either
    assert [t.state.name for t in stored_cnn_trials(postgres_url, "boot")] == ["COMPLETE"]  # the target: 1 trial
