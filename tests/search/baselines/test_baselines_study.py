from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import REPO, default_sigint, write_dataset

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.durations import parse_duration
from ensemble.search.artifacts import load_proba
from ensemble.search.baselines.models import FAMILIES
from ensemble.search.baselines.saved import load_model
from ensemble.search.baselines.study import subsample
from ensemble.search.storage import open_storage, was_killed

REPO_SPACES = REPO / "search_spaces"
ATTRS = {"val_accuracy", "val_logloss", "fit_seconds", "predict_seconds", "artifact_dir", "family", "n_train", "stage"}

# Tiny spaces so a trial takes well under a second on 240 training rows.
TINY = {
    "logreg": "search_rows: 150\npca_components: 0\nC: {type: float, low: 0.01, high: 1.0, log: true}\nmax_iter: 50\n",
    "xgboost": (
        "search_rows: 150\npca_components: {type: int, low: 5, high: 10}\nn_estimators: 5\nmax_depth: 3\n"
        "learning_rate: {type: float, low: 0.1, high: 0.5, log: true}\nmax_bin: 16\n"
    ),
    "knn": "search_rows: 0\npca_components: 10\nn_neighbors: {type: int, low: 1, high: 5}\n",
}


@pytest.fixture
def setup(runs_env, tmp_path):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    for name, text in TINY.items():
        (spaces / f"{name}.yaml").write_text(text)
    return data, spaces


def _cli(data, spaces, *extra):
    return main(["baselines", "--run", "t", "--data", str(data), "--spaces", str(spaces), "--jobs", "1", *extra])


def _study(family):
    run = open_run("t")
    return optuna.load_study(study_name=f"baseline-{family}", storage=open_storage(run))


def _trials(family):
    """The study's trials, or none while the run or its study does not exist yet."""
    try:
        return _study(family).trials
    except Exception:
        return []


def test_two_families_two_trials_leave_artifacts_and_user_attrs(setup, capsys):
    data, spaces = setup
    assert _cli(data, spaces, "--models", "logreg,xgboost", "--trials", "2") == 0
    out = capsys.readouterr().out
    assert "optuna-dashboard" in out and "optuna.journal" in out
    assert "XGBoost device: cpu" in out
    run = open_run("t")
    for family in ("logreg", "xgboost"):
        trials = _study(family).trials
        assert _study(family).metric_names == ["val_accuracy"]  # optuna-dashboard's name for the value
        assert [t.user_attrs["stage"] for t in trials] == ["search", "search", "refit"]
        assert [t.user_attrs["n_train"] for t in trials] == [150, 150, 240]
        for t in trials:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert ATTRS <= set(t.user_attrs), t.user_attrs
            assert t.user_attrs["family"] == family
            assert t.user_attrs["device"] == "cpu"  # no GPU here: the report says where each model trained
            assert t.value == t.user_attrs["val_accuracy"] > 0.5
            folder = Path(t.user_attrs["artifact_dir"])
            assert folder == run.path("models", f"baseline-{family}", f"trial-{t.number:04d}").resolve()
            shapes = {p: load_proba(folder, p).shape for p in ("val", "holdout", "test")}
            assert shapes == {"val": (30, 10), "holdout": (30, 10), "test": (30, 10)}
            x_val, _ = run.part("val")
            np.testing.assert_allclose(load_model(folder).predict_proba(x_val), load_proba(folder, "val"), atol=1e-5)
        files = {p.name for p in Path(trials[0].user_attrs["artifact_dir"]).iterdir()}
        model_files = {"model.ubj", "preprocess.joblib"} if family == "xgboost" else {"model.joblib"}
        assert model_files | {"config.json", "proba_val.npy", "proba_holdout.npy", "proba_test.npy"} == files
    assert not list(run.path("models").rglob("*.partial"))  # hidden .trial-NNNN.partial work folders


def test_rerun_continues_the_study(setup):
    data, spaces = setup
    assert _cli(data, spaces, "--models", "knn", "--trials", "2") == 0
    assert len(_study("knn").trials) == 2  # search_rows 0: trials already see all rows, no refit
    assert _cli(data, spaces, "--models", "knn", "--trials", "1") == 0
    assert len(_study("knn").trials) == 3


def test_a_changed_space_is_refused_before_any_study_changes(setup, capsys):
    data, spaces = setup
    assert _cli(data, spaces, "--models", "logreg,knn", "--trials", "1") == 0
    before = {f: [t.state.name for t in _study(f).trials] for f in ("logreg", "knn")}
    capsys.readouterr()
    (spaces / "knn.yaml").write_text(TINY["knn"] + "weights: {type: categorical, choices: [distance, uniform]}\n")
    (spaces / "logreg.yaml").write_text(TINY["logreg"].replace("log: true", "log: false"))  # another scale
    assert _cli(data, spaces, "--models", "logreg,knn", "--trials", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'C' is float 0.01..1" in err and "(log)" in err and "--restart" in err
    assert {f: [t.state.name for t in _study(f).trials] for f in ("logreg", "knn")} == before  # nothing asked
    (spaces / "logreg.yaml").write_text(TINY["logreg"].replace("high: 1.0", "high: 2.0"))  # a new range is fine
    assert _cli(data, spaces, "--models", "logreg", "--trials", "1", "--no-refit") == 0
    assert [t.state.name for t in _study("logreg").trials] == [*before["logreg"], "COMPLETE"]


def test_trial_left_running_by_a_killed_process_is_failed_and_its_folder_removed(setup):
    data, spaces = setup
    assert _cli(data, spaces, "--models", "knn", "--trials", "1") == 0
    study = _study("knn")
    killed = study.ask()  # as a killed process leaves it: RUNNING, owner gone, half-written folder
    killed.set_user_attr("pid", 2**22 + 12345)
    killed.set_user_attr("host", __import__("socket").gethostname())
    partial = open_run("t").path("models", "baseline-knn", f".trial-{killed.number:04d}.partial")
    partial.mkdir(parents=True)
    assert _cli(data, spaces, "--models", "knn", "--trials", "1") == 0
    states = [t.state for t in _study("knn").trials]
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert _study("knn").trials[killed.number].user_attrs["fail_reason"].startswith("left RUNNING")
    assert not partial.exists() and states.count(optuna.trial.TrialState.COMPLETE) == 2


def test_parallel_workers_share_the_journal(setup):
    data, spaces = setup
    args = ["baselines", "--run", "t", "--data", str(data), "--spaces", str(spaces), "--models", "knn,logreg"]
    assert main([*args, "--trials", "2", "--jobs", "2", "--no-refit"]) == 0
    assert [len(_study(f).trials) for f in ("knn", "logreg")] == [2, 2]


def test_failed_trial_leaves_no_model_folder(setup, monkeypatch, capsys):
    data, spaces = setup

    class Boom:
        def fit(self, x, y):
            raise RuntimeError("model exploded")

    monkeypatch.setitem(FAMILIES, "knn", dataclasses.replace(FAMILIES["knn"], build=lambda p, ctx: Boom()))
    assert _cli(data, spaces, "--models", "knn", "--trials", "2") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: no completed trial for knn: RuntimeError: model exploded"
    assert [t.state for t in _study("knn").trials] == [optuna.trial.TrialState.FAIL] * 2
    assert not list(open_run("t").path("models").rglob("*trial-*"))  # neither trial-NNNN nor .trial-NNNN.partial


def test_timeout_stops_starting_search_trials(setup, capsys):
    data, spaces = setup
    assert _cli(data, spaces, "--models", "knn", "--trials", "3", "--timeout", "0.001") == 0
    assert "3 search trial(s) not started: --timeout reached" in capsys.readouterr().out
    assert not [t for t in _study("knn").trials if t.state.is_finished()]


BAD_SPACES = [
    ("C: 1.0\nCc: {type: float, low: 0.1, high: 1.0}\n", "unknown key 'Cc'"),
    ("C: {type: float, low: 10.0, high: 0.1}\n", "key 'C': low 10.0 is greater than high 0.1"),
    ("C: {type: float, low: 0.0, high: 1.0, log: true}\n", "key 'C': log scale needs low > 0"),
    ("C: {type: floats, low: 0.1, high: 1.0}\n", "key 'C': 'type' must be int, float or categorical"),
    ("penalty: {type: categorical, choices: [l2, l3]}\n", "key 'penalty': value 'l3' rejected by logreg"),
    ("search_rows: -5\n", "key 'search_rows': must be a whole number >= 0"),
    ("C: [1, 2\n", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_bad_search_space_file_names_file_and_key(setup, capsys, text, message):
    data, spaces = setup
    (spaces / "logreg.yaml").write_text(text)
    assert _cli(data, spaces, "--models", "logreg", "--trials", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {spaces / 'logreg.yaml'}") and message in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "svm,forest"], "unknown model(s) forest; valid: logreg, rf, extratrees, knn, svm, xgboost"),
        (["--timeout", "10 minutes"], "--timeout: cannot read duration '10 minutes'"),
        (["--trials", "-1"], "--trials must be >= 0"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(setup, capsys, extra, message):
    data, spaces = setup
    assert _cli(data, spaces, *extra) == 2  # a later --jobs overrides _cli's --jobs 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_subsample_is_stratified_and_deterministic():
    y = np.repeat(np.arange(10), 100)
    idx = subsample(y, 200, seed=0)
    assert len(idx) == 200 and np.all(np.bincount(y[idx]) == 20)
    np.testing.assert_array_equal(idx, subsample(y, 200, seed=0))
    assert len(subsample(y, 0, seed=0)) == 1000


@pytest.mark.slow
def test_ctrl_c_mid_trial_does_not_spend_it_and_the_next_call_runs_it_again(setup, tmp_path):
    data, spaces = setup
    slow = "search_rows: 0\npca_components: 0\nn_estimators: {type: int, low: 4000, high: 5000}\n"  # seconds a trial
    (spaces / "rf.yaml").write_text(slow)
    args = ["baselines", "--run", "t", "--data", str(data), "--spaces", str(spaces), "--models", "rf", "--jobs", "1"]
    args += ["--trials", "1", "--no-refit"]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        command = [sys.executable, "-m", "ensemble", *args]
        proc = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True, preexec_fn=default_sigint)
        end = time.time() + 120
        while not (runs := [t for t in _trials("rf") if t.state.name == "RUNNING" and "worker" in t.user_attrs]):
            assert proc.poll() is None and time.time() < end, log.read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
        assert proc.wait(60) == 130
    text = log.read_text()
    resume = f"interrupted: trial {runs[0].number} will run again; resume with: ensemble {shlex.join(args)}"
    assert [line for line in text.splitlines() if "interrupted" in line] == [resume] and "Traceback" not in text
    (first,) = [t for t in _trials("rf") if t.state.name != "WAITING"]
    assert first.state.name == "FAIL" and first.user_attrs["interrupted"] is True and was_killed(first)
    assert main(args) == 0
    trials = _study("rf").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == first.params and trials[1].user_attrs["retry_of"] == first.number
