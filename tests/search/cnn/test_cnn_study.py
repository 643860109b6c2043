from __future__ import annotations

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
from conftest import TINY_CNN_SPACE as TINY

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.errors import SpaceError
from ensemble.search.cnn import model as cnn
from ensemble.search.cnn.config import DEFAULT
from ensemble.search.cnn.study import SearchSettings, finished_trials, load_cnn_space, run_search
from ensemble.search.storage import open_storage, was_killed


@pytest.fixture
def tiny(runs_env: Path, tmp_path: Path):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    space = tmp_path / "cnn.yaml"
    space.write_text(TINY.format(epochs=2))
    run = open_run("s", data=data, say=lambda s: None)
    return run, load_cnn_space(space), space


def _quiet(msg: str) -> None:
    pass


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_trials_leave_curves_attrs_and_artifacts(tiny) -> None:
    run, space, _ = tiny
    study = run_search(run, space, SearchSettings(isolate=False, trials=2, pruner="none"), say=_quiet)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    assert optuna.load_study(study_name="cnn", storage=open_storage(run)).metric_names == ["val_accuracy"]
    for t in trials:
        assert sorted(t.intermediate_values) == [1, 2]
        for key in ("val_accuracy", "val_logloss", "epochs_run", "train_seconds", "images_per_second", "params"):
            assert key in t.user_attrs
        assert t.user_attrs["backend"] == "tensorflow" and t.user_attrs["device"] == "cpu"
        assert t.value == t.user_attrs["val_accuracy"]
        folder = Path(t.user_attrs["artifact_dir"])
        for name in ("model.keras", "config.json", "proba_val.npy", "proba_holdout.npy", "proba_test.npy"):
            assert (folder / name).is_file()
        assert (folder / "learning_curve.png").read_bytes().startswith(b"\x89PNG")  # previewed by the dashboard
        p = np.load(folder / "proba_test.npy")
        assert p.shape == (30, 10) and np.allclose(p.sum(1), 1, atol=1e-4)


def test_forced_pruning_gives_pruned_trial(tiny) -> None:
    run, space, _ = tiny
    study = run_search(run, space, SearchSettings(isolate=False, trials=1), pruner=AlwaysPrune(), say=_quiet)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.PRUNED and list(t.intermediate_values) == [1]


@pytest.mark.slow
def test_resume_continues_and_stale_running_trials_fail(tiny) -> None:
    run, space, _ = tiny
    run_search(run, space, SearchSettings(isolate=False, trials=1, pruner="none"), say=_quiet)
    study = optuna.load_study(study_name="cnn", storage=open_storage(run))
    ghost = study.ask()
    study._storage.set_trial_user_attr(ghost._trial_id, "pid", 2**22 + 12345)  # a pid that is not running
    study._storage.set_trial_user_attr(ghost._trial_id, "host", __import__("socket").gethostname())
    study = run_search(run, space, SearchSettings(isolate=False, trials=3, pruner="none"), say=_quiet)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # a killed trial does not use up --trials
    assert study.trials[1].state == optuna.trial.TrialState.FAIL
    assert study.trials[1].user_attrs["killed"] is True and "stopped" in study.trials[1].user_attrs["fail_reason"]
    assert finished_trials(study) == 3
    again = run_search(run, space, SearchSettings(isolate=False, trials=3, pruner="none"), say=_quiet)
    assert len(again.trials) == 4


def fails_first(real, exc: BaseException):
    """``real``, except that its first call raises ``exc``."""
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(*args, **kwargs)

    return flaky


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    run, space, _ = tiny
    monkeypatch.setattr(cnn, "fit_model", fails_first(cnn.fit_model, MemoryError("out of memory (simulated)")))
    study = run_search(run, space, SearchSettings(isolate=False, trials=2, pruner="none"), say=_quiet)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[0].user_attrs["fail_reason"] == "MemoryError: out of memory (simulated)"
    assert not (run.path("models", "cnn", "trial-0000") / "model.keras").exists()


def test_a_trial_whose_worker_process_fails_is_recorded_and_the_study_goes_on(tiny, monkeypatch) -> None:
    """In a trainer process (the default) a trial's error arrives as a WorkerError: that trial fails, not the study."""
    from ensemble.search.cnn.pool import Trainer
    from ensemble.search.cnn.trainer import WorkerError

    run, space, _ = tiny
    oom = WorkerError("ResourceExhaustedError: OOM when allocating tensor (simulated)")
    monkeypatch.setattr(Trainer, "train", fails_first(Trainer.train, oom))
    study = run_search(run, space, SearchSettings(trials=2, pruner="none"), say=_quiet)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[0].user_attrs["fail_reason"].startswith("ResourceExhaustedError")


def test_saved_model_reloads_with_same_probabilities(tiny) -> None:
    import keras

    run, space, _ = tiny
    study = run_search(run, space, SearchSettings(isolate=False, trials=1, pruner="none"), say=_quiet)
    folder = Path(study.best_trial.user_attrs["artifact_dir"])
    model = keras.saving.load_model(folder / "model.keras")
    x_val, _ = run.part("val")
    # the saved copy is the prediction one (BatchNorm folded, augmentation removed): same outputs to 1e-4
    np.testing.assert_allclose(cnn.predict_proba(model, x_val), np.load(folder / "proba_val.npy"), atol=1e-4)
    assert "RandomAffine" not in {type(layer).__name__ for layer in model.layers}
    # plain Keras, in a Python that never imported ensemble, loads it
    code = "import sys, keras; keras.models.load_model(sys.argv[1]); assert 'ensemble' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code, str(folder / "model.keras")], capture_output=True, text=True,
                          timeout=120, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


BAD_SPACES = {
    "unknown key": ("filterz: 8\n", r"cnn\.yaml: unknown key 'filterz'"),
    "bad range": ("learning_rate: {type: float, low: 0.1, high: 0.01}\n", r"key 'learning_rate': low 0.1 is greater"),
    "bad choice": ("optimizer: rmsprop\n", r"key 'optimizer': 'rmsprop' is not one of adam, adamw, sgd"),
    "bad type": ("epochs: {type: integer, low: 1, high: 2}\n", r"key 'epochs': 'type' must be int, float or"),
    "not positive": ("batch_size: 0\n", r"key 'batch_size': must be a positive integer"),
    "bad yaml": ("epochs: [1, 2\n", r"cnn\.yaml:\d+: invalid YAML"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_file(case: str, tmp_path: Path) -> None:
    text, pattern = BAD_SPACES[case]
    f = tmp_path / "cnn.yaml"
    f.write_text(text)
    with pytest.raises(SpaceError, match=pattern):
        load_cnn_space(f)


def test_cli_bad_space_stops_at_once(runs_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "cnn.yaml"
    f.write_text("filterz: 8\n")
    assert main(["search", "--run", "x", "--space", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'filterz'" in err and "Traceback" not in err
    assert not (runs_env / "x").exists()


def test_shipped_space_is_valid() -> None:
    space = load_cnn_space(REPO / "search_spaces" / "cnn.yaml")
    assert "learning_rate" in space.params


def test_first_trial_of_a_new_study_is_the_known_good_default(tmp_path: Path) -> None:
    from ensemble.search.cnn.study import known_good_params

    f = tmp_path / "cnn.yaml"
    f.write_text(
        "filters: {type: categorical, choices: [16, 24]}\nlearning_rate: {type: float, low: 1.0e-2, high: 0.1}\n"
    )
    assert known_good_params(load_cnn_space(f)) == {"filters": DEFAULT.filters}  # lr default is outside


@pytest.mark.slow
def test_isolated_worker_trains_reports_and_prunes(tiny) -> None:
    run, space, _ = tiny
    study = run_search(run, space, SearchSettings(trials=1, pruner="none"), say=_quiet)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2]
    assert (Path(t.user_attrs["artifact_dir"]) / "model.keras").is_file()
    study = run_search(run, space, SearchSettings(trials=2), pruner=AlwaysPrune(), say=_quiet)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    assert not run.path("models", "cnn", "trial-0001").exists()
    assert not run.path(".cache", "search-arrays.npz").exists()


def test_batchnorm_momentum_follows_training_length() -> None:
    assert cnn.bn_momentum(33_600, DEFAULT) == 0.99  # 263 steps x 8 epochs
    assert cnn.bn_momentum(3_200, DEFAULT) == 0.9  # demo data: 25 steps x 8 epochs
    model = cnn.build_model(DEFAULT, momentum=0.9)
    assert {layer.momentum for layer in model.layers if type(layer).__name__ == "BatchNormalization"} == {0.9}


def test_search_arrays_are_one_file_per_process_written_atomically(tiny) -> None:
    from ensemble.locks import worker_token
    from ensemble.search.cnn.arrays import arrays_file, write_arrays

    run, _, _ = tiny
    path = write_arrays(run, max_train=None, seed=0)
    assert path == arrays_file(run, worker_token(run.root)) and worker_token(run.root) in path.name
    assert arrays_file(run, "otherhost-1-abcd") != path  # another process never shares (or deletes) this file
    with np.load(path) as npz:
        assert npz["x_train"].shape == run.part("train")[0].shape
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def _space_with(tmp_path: Path, name: str, filters: str, lr: str = "low: 1.0e-3, high: 3.0e-3") -> Path:
    f = tmp_path / f"{name}.yaml"
    text = TINY.format(epochs=1).replace("filters: 4", f"filters: {{type: categorical, choices: {filters}}}")
    f.write_text(text.replace("low: 1.0e-3, high: 3.0e-3", lr))
    return f


@pytest.mark.slow
def test_a_changed_space_is_refused_before_any_trial(runs_env: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=200, n_test=20)
    cli = [sys.executable, "-m", "ensemble", "search", "--run", "sp", "--data", str(data), "--pruner", "none"]

    def search(space: Path, trials: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, "--space", str(space), "--trials", str(trials)], capture_output=True, text=True)

    assert search(_space_with(tmp_path, "a", "[4, 8]"), 1).returncode == 0
    changed = search(_space_with(tmp_path, "b", "[4, 16]"), 2)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    (line,) = changed.stderr.strip().splitlines()
    assert "'filters'" in line and "[4, 16]" in line and "[4, 8]" in line
    assert "--restart" in line and "new run name" in line
    run = open_run("sp")
    assert [t.state.name for t in optuna.load_study(study_name="cnn", storage=open_storage(run)).trials] == ["COMPLETE"]
    # a new range of a float key is fine (Optuna allows it): the study goes on
    wider = search(_space_with(tmp_path, "c", "[4, 8]", lr="low: 1.0e-4, high: 3.0e-3"), 2)
    assert wider.returncode == 0, wider.stderr
    states = [t.state.name for t in optuna.load_study(study_name="cnn", storage=open_storage(run)).trials]
    assert states == ["COMPLETE", "COMPLETE"]


def _interrupt_when(proc: subprocess.Popen, log: Path, mark: str) -> int:
    """Send SIGINT to ``proc``'s process group (as Ctrl-C does) once ``mark`` is in its log; its exit code."""
    end = time.time() + 240
    while mark not in log.read_text():
        assert proc.poll() is None and time.time() < end, log.read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(120)


@pytest.mark.slow
def test_ctrl_c_mid_trial_does_not_spend_it_and_the_resume_runs_it_again(runs_env: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=200, n_test=20)
    space = tmp_path / "cnn.yaml"
    space.write_text(TINY.format(epochs=4))
    args = ["search", "--run", "ci", "--data", str(data), "--space", str(space), "--trials", "2", "--pruner", "none"]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        command = [sys.executable, "-m", "ensemble", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            command, stdout=out, stderr=out, env=env, start_new_session=True, preexec_fn=default_sigint
        )
        assert _interrupt_when(proc, log, "trial 0 epoch 1:") == 130
    text = log.read_text()
    resume = f"interrupted: trial 0 will run again; resume with: ensemble {shlex.join(args)}"
    assert [line for line in text.splitlines() if "interrupted:" in line] == [resume] and "Traceback" not in text
    study = optuna.load_study(study_name="cnn", storage=open_storage(open_run("ci")))
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["interrupted"] is True
    assert was_killed(first) and finished_trials(study) == 0  # not counted toward --trials
    assert not open_run("ci").path("models", "cnn", "trial-0000").exists()
    again = subprocess.run([sys.executable, "-m", "ensemble", *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="cnn", storage=open_storage(open_run("ci"))).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]  # two finished, as asked
    assert trials[1].params == first.params and trials[1].user_attrs["retry_of"] == 0  # the same trial, again
