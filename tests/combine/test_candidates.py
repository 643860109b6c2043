"""Trials whose files are not on this machine: ``ensemble build`` and ``ensemble report`` treat them alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_CNN_SPACE, write_dataset

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search

pytest.importorskip("keras")

AWAY_HOST = "gpu-box-elsewhere"


@pytest.fixture
def run_with_a_trial_from_elsewhere(runs_env: Path, tmp_path: Path) -> str:
    """Two CNN trials trained here, and a better COMPLETE one trained on another machine (no files here)."""
    import optuna

    from ensemble.search.artifacts import CNN_STUDY
    from ensemble.search.storage import open_storage

    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    (tmp_path / "cnn.yaml").write_text(TINY_CNN_SPACE.format(epochs=1))
    run = open_run("r", data=data, say=lambda s: None)
    run_search(run, load_cnn_space(tmp_path / "cnn.yaml"), SearchSettings(isolate=False, trials=2, pruner="none"))
    study = optuna.load_study(study_name=CNN_STUDY, storage=open_storage(run, None))
    here = study.trials[0].user_attrs
    away_root = f"/srv/{AWAY_HOST}/runs/r"
    attrs = {**here, "val_accuracy": 1.0, "val_logloss": 0.0, "host": AWAY_HOST, "run_root": away_root,
             "artifact_dir": f"{away_root}/trials/cnn/trial-0002"}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs=attrs))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    return "r"


@pytest.mark.slow
def test_build_and_report_leave_out_a_trial_trained_elsewhere_and_say_so(run_with_a_trial_from_elsewhere, capsys):
    name = run_with_a_trial_from_elsewhere
    line = f"cnn-trial-0002 (trained on host {AWAY_HOST}) has no files here"
    assert main(["build", "--run", name, "--top-k", "3", "--weights", "equal", "--tta", "none"]) == 0
    assert line in capsys.readouterr().out
    root = Path("runs") / name
    manifest = json.loads((root / "ensemble" / "manifest.json").read_text())
    assert sorted(m["trial"] for m in manifest["members"] if m["kind"] == "cnn") == [0, 1]

    assert main(["report", "--run", name, "--top-cnn", "3", "--gallery", "0"]) == 0
    assert line in capsys.readouterr().out
    models = [r["model"] for r in json.loads((root / "report" / "summary.json").read_text())["leaderboard"]]
    assert {"cnn-trial-0000", "cnn-trial-0001"} <= set(models) and "cnn-trial-0002" not in models


@pytest.mark.slow
def test_build_and_report_stop_alike_when_no_top_trial_has_files_here(run_with_a_trial_from_elsewhere, capsys):
    name = run_with_a_trial_from_elsewhere
    root = Path("runs") / name
    assert main(["build", "--run", name, "--top-k", "1", "--tta", "none"]) == 2
    build_err = capsys.readouterr().err.strip()
    assert main(["report", "--run", name, "--top-cnn", "1", "--gallery", "0"]) == 2
    report_err = capsys.readouterr().err.strip()
    assert build_err == report_err and len(build_err.splitlines()) == 1
    assert "cnn-trial-0002" in build_err and AWAY_HOST in build_err and "--artifacts" in build_err
    assert not (root / "ensemble").exists() and not (root / "submission.csv").exists()  # nothing half-written
