"""``ensemble worker``: three machines (three folders, three processes) share one run's CNN study in a
real PostgreSQL server and an artifact store; one is SIGKILLed mid-trial; a fourth builds from it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CNN_SPACE, stored_cnn_trials, wait_until, write_dataset

from ensemble.cli import main

pytestmark = pytest.mark.slow  # end to end: run with -m slow (CI runs both)

pytest.importorskip("keras")
TARGET = 5


def _start(args: list[str], folder: Path, env: dict[str, str]) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    env = {**env, "ENSEMBLE_RUNS": str(folder / "runs")}
    log = (folder / "log.txt").open("w")
    return subprocess.Popen([sys.executable, "-m", "ensemble", *args], cwd=folder, env=env, stdout=log, stderr=log)


def test_three_workers_one_killed_then_a_fourth_folder_builds(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data", n_train=150, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=60))  # a few seconds a trial: the workers overlap
    store = tmp_path / "shared-mount"
    env = {**os.environ, "ENSEMBLE_HEARTBEAT_S": "1", "ENSEMBLE_STORAGE": postgres_url, "PYTHONUNBUFFERED": "1"}
    common = ["--run", "crew", "--data", str(data), "--artifacts", str(store)]
    first = _start(["search", *common, "--space", str(space), "--trials", str(TARGET), "--pruner", "none"],
                   tmp_path / "A", env)  # fmt: skip
    # the study exists (and records what workers need)
    wait_until(lambda: bool(stored_cnn_trials(postgres_url, "crew")))
    b = _start(["worker", *common], tmp_path / "B", env)
    c = _start(["worker", *common], tmp_path / "C", env)
    c_root = str((tmp_path / "C" / "runs" / "crew").resolve())
    wait_until(
        lambda: any(
            t.state.name == "RUNNING" and t.user_attrs.get("run_root") == c_root
            for t in stored_cnn_trials(postgres_url, "crew")
        )
    )
    c.send_signal(signal.SIGKILL)  # mid-trial
    c.wait()
    for p in (first, b):
        assert p.wait(timeout=300) == 0, (tmp_path / ("A" if p is first else "B") / "log.txt").read_text()[-3000:]
    said = (tmp_path / "B" / "log.txt").read_text()
    b_root = str((tmp_path / "B" / "runs" / "crew").resolve())
    mine = sum(t.user_attrs.get("run_root") == b_root for t in stored_cnn_trials(postgres_url, "crew"))
    assert f"this machine ran {mine} trial(s)" in said and "***" in (tmp_path / "A" / "log.txt").read_text()
    assert not any("s3cret-pw" in (tmp_path / m / "log.txt").read_text() for m in "ABC")  # never printed
    trials = stored_cnn_trials(postgres_url, "crew")
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states  # the killed worker's trial was failed (heartbeat or token)
    assert TARGET <= states.count("COMPLETE") <= TARGET + 2  # at most (workers - 1) over
    hosts = {t.user_attrs.get("run_root") for t in trials if t.state.name == "COMPLETE"}
    assert len(hosts) >= 2  # more than one machine trained members
    assert len({t.params.get("learning_rate") for t in trials if t.state.name == "COMPLETE"}) > 1  # own seeds

    for t in trials:  # every complete trial's files are in the store
        if t.state.name == "COMPLETE":
            names = {
                m.filename
                for m in optuna.artifacts.get_all_artifact_meta(t, storage=optuna.storages.get_storage(postgres_url))
            }
            assert {"model.keras", "proba_test.npy", "config.json"} <= names, (t.number, names)
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "D" / "runs"))
    monkeypatch.setenv("ENSEMBLE_STORAGE", postgres_url)
    monkeypatch.setenv("ENSEMBLE_ARTIFACTS", str(store))
    assert main(["build", "--run", "crew", "--data", str(data), "--tta", "none"]) == 0
    assert main(["report", "--run", "crew", "--data", str(data)]) == 0
    from ensemble.report.submission import check_submission

    assert len(check_submission(tmp_path / "D" / "runs" / "crew" / "submission.csv", n_rows=20)) == 20
