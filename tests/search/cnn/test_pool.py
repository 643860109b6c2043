"""Long-lived trainer processes (ensemble.search.cnn.pool) and several trials at once (ensemble.search.cnn.parallel)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CNN_SPACE as TINY
from conftest import our_children, write_dataset

from ensemble.data.runs import open_run
from ensemble.errors import UsageError
from ensemble.search.cnn.limits import TrainerLimits, trainer_env
from ensemble.search.cnn.parallel import AUTO_MAX, Meter, choose_jobs, optimize, parse_jobs
from ensemble.search.cnn.pool import Trainer
from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search


@pytest.fixture
def tiny(runs_env: Path, tmp_path: Path):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    space = tmp_path / "cnn.yaml"
    space.write_text(TINY.format(epochs=2))
    return open_run("s", data=data, say=lambda s: None), load_cnn_space(space)


def _quiet(msg: str) -> None:
    pass


class KillsTrainer(optuna.pruners.BasePruner):
    """Kills the trainer process (SIGKILL) at trial 1's first epoch, as the kernel's OOM killer would."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.number == 1:
            for child in mp.active_children():
                os.kill(child.pid, signal.SIGKILL)
            time.sleep(0.5)
        return False


@pytest.mark.slow
def test_a_trainer_trains_several_trials_is_recycled_and_a_killed_one_fails_only_its_trial(tiny) -> None:
    run, space = tiny
    run.path("models", "cnn").mkdir(parents=True)
    run.path("models", "cnn", ".trial-0004.partial").write_text("")  # trial 4 cannot save: it fails in its trainer
    settings = SearchSettings(trials=5, pruner="none", recycle_after=2)
    study = run_search(run, space, settings, pruner=KillsTrainer(), say=_quiet)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "FAIL"]
    assert "died" in trials[1].user_attrs["fail_reason"]  # killed mid-trial: only this trial failed
    assert trials[4].user_attrs["fail_reason"].startswith("FileExistsError")
    pids = [t.user_attrs.get("trainer_pid") for t in trials]
    assert pids[0] != pids[2] == pids[3]  # a fresh trainer after the kill, which then trains two trials
    for t in (trials[0], trials[2], trials[3]):
        assert 0 <= t.user_attrs["overhead_seconds"] <= t.user_attrs["trial_seconds"]
        assert (Path(t.user_attrs["artifact_dir"]) / "model.keras").is_file()
    assert not our_children()  # the search closed its trainers


def fake_train(self: Trainer, config: dict, folder: Path, *, seed: int, on_epoch) -> dict:
    """A trainer's answer without Keras: two epochs a tenth of a second each."""
    folder.mkdir(parents=True)
    for epoch in (1, 2):
        time.sleep(0.1)
        on_epoch(epoch, {"val_accuracy": 0.5})
    return {"val_accuracy": 0.5, "val_logloss": 1.0, "epochs_run": 2, "best_epoch": 2, "train_seconds": 0.2,
            "predict_seconds": 0.0, "images_per_second": 1.0, "params": 1, "trainer_pid": id(self)}  # fmt: skip


def test_trials_at_once_lease_one_trainer_each(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    run, space = tiny
    monkeypatch.setattr(Trainer, "train", fake_train)
    told: list[int] = []
    study = run_search(run, space, SearchSettings(trials=6, pruner="none", jobs=3), say=_quiet, on_jobs=told.append)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6 and told == [3]
    assert len({t.user_attrs["trainer_pid"] for t in study.trials}) == 3
    starts = sorted(t.datetime_start for t in study.trials)
    assert starts[2] < min(t.datetime_complete for t in study.trials)  # three ran at once


@pytest.mark.slow
def test_two_trials_at_once_train_in_two_trainer_processes(tiny) -> None:
    run, space = tiny
    study = run_search(run, space, SearchSettings(trials=2, pruner="none", jobs=2), say=_quiet)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert len({t.user_attrs["trainer_pid"] for t in trials}) == 2
    first, second = sorted(trials, key=lambda t: t.datetime_start)
    assert second.datetime_start < first.datetime_complete  # they overlapped
    assert not our_children()


def test_several_trials_at_once_need_trainer_processes(tiny) -> None:
    run, space = tiny
    with pytest.raises(UsageError, match="trainer processes"):
        run_search(run, space, SearchSettings(trials=2, jobs=2, isolate=False), say=_quiet)


def test_jobs_setting_and_the_choice_of_auto() -> None:
    assert parse_jobs("auto") == "auto" and parse_jobs(3) == 3 and parse_jobs("2") == 2
    for bad in (0, -1, True, "many", 1.5):
        with pytest.raises(UsageError):
            parse_jobs(bad)
    assert choose_jobs({1: 100.0, 2: 190.0, 4: 210.0}) == 2  # 4 gains too little over 2
    assert choose_jobs({1: 100.0, 2: 110.0}) == 1
    assert choose_jobs({1: 100.0, 2: 130.0, 4: 250.0, 8: 260.0}) == 4


def _ramp(work, trials: int = 20) -> tuple[int, optuna.Study]:
    """``optimize(jobs="auto")`` on an in-memory study whose trials call ``work`` (no training)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    meter = Meter()

    def objective(trial: optuna.Trial) -> float:
        work()
        meter.add(1000)
        return trial.suggest_float("x", 0, 1)

    got = optimize(study, objective, jobs="auto", pool=None, meter=meter, n_trials=trials, timeout=60, say=_quiet)
    return got, study


def test_auto_adds_trials_at_once_while_they_train_faster() -> None:
    got, study = _ramp(lambda: time.sleep(0.3))  # waiting, not computing: k at once are k times faster
    assert got == AUTO_MAX and len(study.trials) == 20


def test_auto_keeps_one_trial_at_once_when_the_device_is_full() -> None:
    device = threading.Lock()

    def full() -> None:
        with device:  # one trial at a time uses the whole device
            time.sleep(0.15)

    got, study = _ramp(full)
    assert got == 1 and len(study.trials) == 20


def test_trainers_cap_their_share_of_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's own setting wins
    env = trainer_env(TrainerLimits(trainers=4, compile_cache="/tmp/cache"))
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/tmp/cache"
    assert "JAX_COMPILATION_CACHE_DIR" not in trainer_env(TrainerLimits())


def test_the_speed_probe_is_the_first_trainers_first_job_and_it_then_trains_the_first_trial(tiny) -> None:
    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.study import trainers

    run, space = tiny
    config = CnnConfig.from_json(space.defaults())
    settings = SearchSettings(trials=1, pruner="none")
    with trainers(run, settings, _quiet) as pool:
        speed = pool.probe(config, 128)
        probed_in = pool.trainers[0].proc.pid
        study = run_search(run, space, settings, say=_quiet, pool=pool)
        assert pool.starts == 1  # no process of its own for the probe, and no second start for the trial
    assert speed > 0 and study.trials[0].user_attrs["trainer_pid"] == probed_in
    assert not our_children()


def test_a_trial_predicts_its_three_parts_in_whole_batches_of_one_shape() -> None:
    import keras
    import numpy as np

    from ensemble.search.cnn.model import as_input
    from ensemble.search.cnn.trainer import predict_parts

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(h)))
    parts = [np.random.default_rng(i).integers(0, 256, (n, 28, 28), dtype=np.uint8) for i, n in enumerate((7, 5, 9))]
    shapes: list[int] = []
    predict = model.predict

    def recorded(x, **kwargs):
        shapes.append(len(x))
        return predict(x, **kwargs)

    model.predict = recorded
    got = predict_parts(model, parts, batch_size=8)
    assert [len(p) for p in got] == [7, 5, 9] and shapes == [24]  # one call, 21 images padded to 3 batches of 8
    for p, x in zip(got, parts):
        np.testing.assert_allclose(p, predict(as_input(x), verbose=0), atol=1e-6)
