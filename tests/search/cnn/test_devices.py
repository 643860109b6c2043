"""Devices (ensemble.search.devices) and trainers spread over them on a CPU: a fake `nvidia-smi` lists 4 GPUs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CNN_SPACE as TINY
from conftest import our_children, write_dataset

from ensemble.data.runs import open_run
from ensemble.errors import UsageError
from ensemble.pipeline.baselines_child import baselines_gpu_env
from ensemble.pipeline.presets import PRESETS, settings_for
from ensemble.search.cnn import study as study_module
from ensemble.search.cnn.limits import TrainerLimits, trainer_env
from ensemble.search.cnn.pool import TrainerPool
from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search
from ensemble.search.devices import Device, Found, check_choice, discover, merged_devices, select, visible_ids


def test_discovery_reads_cuda_visible_devices_first_then_nvidia_smi(
    four_gpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert discover() == Found(("0", "1", "2", "3"), "nvidia-smi -L")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert discover() == Found(("2", "3"), "CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden: nvidia-smi is not asked
    assert discover().ids == () and select("all").labels == ("cpu",)
    assert visible_ids("1,-1,2") == ("1",) and visible_ids("GPU-abc") == ("GPU-abc",)


def test_without_nvidia_smi_the_backend_lists_the_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = discover()
    assert found.ids == () and "backend" in found.source  # this CPU machine's backend sees no GPU


def test_devices_choice_all_some_or_cpu(four_gpus: Path) -> None:
    assert select("all").labels == ("gpu:0", "gpu:1", "gpu:2", "gpu:3")
    chosen = select("gpu:1,3")
    assert chosen.devices == (Device("gpu:1", "1"), Device("gpu:3", "3"))
    assert select("cpu").devices == (Device("cpu", ""),)  # GPUs hidden from the trainers
    with pytest.raises(UsageError, match="no GPU 7"):
        select("0,7")
    for bad in ("", "0,0", "0,,1"):
        with pytest.raises(UsageError):
            check_choice(bad)
    assert select("all", Found((), "nvidia-smi -L")).devices == (Device("cpu", None),)


def test_each_trainer_is_pinned_to_its_device_and_shares_only_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    limits = TrainerLimits(trainers=2)  # two trainers per device: each takes half of its GPU's share
    env = trainer_env(limits, Device("gpu:2", "2"))
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"
    assert trainer_env(limits, Device("cpu", None))["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # left as it is


def test_trials_lease_trainers_on_the_least_busy_device(tmp_path: Path) -> None:
    devices = [Device(f"gpu:{i}", str(i)) for i in range(4)]
    pool = TrainerPool(tmp_path / "arrays.npz", 2, TrainerLimits(trainers=2), devices)
    assert pool.size == 8
    with pool.lease() as a, pool.lease() as b, pool.lease() as c, pool.lease() as d, pool.lease() as e:
        labels = [t.device.label for t in (a, b, c, d)]
        assert sorted(labels) == ["gpu:0", "gpu:1", "gpu:2", "gpu:3"]  # one each before any device takes two
        assert e.device.label in labels and e not in (a, b, c, d)


def _kill_on(pool_seen: list[TrainerPool], label: str) -> optuna.pruners.BasePruner:
    """Kills (SIGKILL) the trainer process on device ``label`` while it trains its first trial."""

    class KillsTrainer(optuna.pruners.BasePruner):
        killed: list[int] = []

        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            target = next(t for t in pool_seen[0].trainers if t.device.label == label)
            if not self.killed and target.proc is not None and target.proc.pid:
                self.killed.append(target.proc.pid)
                os.kill(target.proc.pid, signal.SIGKILL)
                time.sleep(0.5)
            return False

    return KillsTrainer()


@pytest.mark.slow
def test_eight_trials_spread_over_four_gpus_and_a_killed_trainer_fails_only_its_trial(
    four_gpus: Path, runs_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    space_file = tmp_path / "cnn.yaml"
    space_file.write_text(TINY.format(epochs=2))
    run = open_run("gpus", data=data, say=lambda s: None)
    pools: list[TrainerPool] = []
    make_pool = study_module._pool
    monkeypatch.setattr(study_module, "_pool", lambda *a, **k: pools.append(make_pool(*a, **k)) or pools[-1])
    pruner = _kill_on(pools, "gpu:2")
    settings = SearchSettings(trials=8, pruner="none", jobs=1)  # one trainer per device: 4 trials at once
    lines: list[str] = []
    study = run_search(run, load_cnn_space(space_file), settings, pruner=pruner, say=lines.append)
    trials = study.trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(failed) == 1 and len(done) == 7 and len(trials) == 8
    assert failed[0].user_attrs["device"] == "gpu:2" and "died" in failed[0].user_attrs["fail_reason"]
    assert {t.user_attrs["device"] for t in done} == {"gpu:0", "gpu:1", "gpu:2", "gpu:3"}
    for t in done:  # each trainer's environment held its own device, set before Keras was imported
        assert t.user_attrs["cuda_visible_devices"] == t.user_attrs["device"].removeprefix("gpu:")
    on_two = {t.user_attrs["trainer_pid"] for t in done if t.user_attrs["device"] == "gpu:2"}
    assert on_two and pruner.killed[0] not in on_two  # slot 2 got a fresh trainer
    assert len({t.user_attrs["trainer_pid"] for t in done}) == 4
    assert any("gpu:0, gpu:1, gpu:2, gpu:3 (nvidia-smi -L)" in line for line in lines)
    assert not our_children()  # no trainer process is left


def test_a_report_cell_merges_the_gpus_of_one_backend() -> None:
    assert merged_devices(["jax/gpu:10", "jax/gpu:2", "cpu", "jax/gpu:2"]) == "cpu + jax/gpu:2,10"
    assert merged_devices(["tensorflow/cpu"]) == "tensorflow/cpu" and merged_devices([]) is None


def test_devices_is_a_run_setting_checked_before_the_run() -> None:
    assert PRESETS["best"].devices == "all" and settings_for("quick", {"devices": "gpu:0,1"}).devices == "0,1"
    with pytest.raises(UsageError, match="--devices"):
        settings_for("quick", {"devices": "0,0"})


def test_xgboost_gets_a_gpu_the_trainers_leave_free_or_shares_one(four_gpus: Path) -> None:
    assert baselines_gpu_env("0,1") == {"CUDA_VISIBLE_DEVICES": "2"}
    assert baselines_gpu_env("cpu") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert baselines_gpu_env("all") == {}  # every GPU has trainers: XGBoost shares one, as before
