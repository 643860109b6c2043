from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset

from ensemble.cli import main
from ensemble.errors import UsageError
from ensemble.pipeline.presets import PRESETS, Preset, parse_overrides, settings_for
from ensemble.pipeline.state import Budget
from ensemble.report.submission import check_submission

pytest.importorskip("keras")

TINY_SPACE = """\
conv_blocks: 2
filters: {type: categorical, choices: [4, 8]}
kernel_size: 3
batch_norm: false
dense_units: 16
conv_dropout: 0.0
dense_dropout: 0.1
batch_size: 64
epochs: 1
rotation: 0.0
zoom: 0.0
shift: 0.0
"""


def tiny_args(tmp_path: Path, name: str, *extra: str) -> list[str]:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    data = write_dataset(tmp_path / "data", n_train=300, n_test=40, seed=4)
    plan = '{"min_epochs": 1, "max_epochs": 2, "min_members": 2, "max_members": 2, "overhead_s": 0.5}'
    sets = [f"space={space}", "cnn_trials=2", "baselines=logreg,knn", "baseline_trials=1", "top_k=2", "tta=none"]
    sets += [f"plan={plan}", "final_members=1"]  # one anytime member, not as many as the 2-minute budget holds
    return ["run", "--name", name, "--data", str(data), *extra] + [a for s in sets for a in ("--set", s)]


def test_presets_and_overrides() -> None:
    assert set(PRESETS) == {"quick", "standard", "best"}
    for p in PRESETS.values():
        assert isinstance(p, Preset) and p.plan is not None and p.refit_full
    assert parse_overrides(["cnn_trials=3", "space=x.yaml", "max_train=null"]) == {
        "cnn_trials": 3,
        "space": "x.yaml",
        "max_train": None,
    }
    assert settings_for("quick", {"cnn_trials": 1}).cnn_trials == 1
    plan = settings_for("quick", {"plan": {"min_epochs": 1, "max_epochs": 2}}).plan
    assert plan is not None and (plan.min_epochs, plan.max_epochs) == (1, 2)
    assert settings_for("quick", {"plan": None}).plan is None
    for bad in ({"cnn_trials": "many"}, {"refit_full": 1}, {"plan": [1]}, {"plan": {"bogus": 1}}, {"max_train": -5}):
        with pytest.raises(UsageError, match="--set"):
            settings_for("quick", bad)
    with pytest.raises(UsageError, match="unknown run setting"):
        settings_for("quick", {"bogus": 1})
    with pytest.raises(UsageError, match="--preset"):
        settings_for("huge")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_budget_splits_over_the_stages_left() -> None:
    b = Budget(100.0, {"search": 0.8, "build": 0.15, "report": 0.05}, ["search", "build", "report"])
    assert b.ends["search"] - b.start == pytest.approx(80.0)
    assert b.ends["report"] - b.start == pytest.approx(100.0)
    b = Budget(100.0, {"search": 0.8, "build": 0.15, "report": 0.05}, ["build", "report"])
    assert b.ends["search"] == b.start and b.ends["build"] - b.start == pytest.approx(75.0)


def final_labels(name: str) -> np.ndarray:
    """The test labels of the model the report chose (its refit when there is one), from its stored probabilities."""
    from ensemble.data.runs import open_run
    from ensemble.report.final import refit_entry
    from ensemble.report.summary import collect

    run = open_run(name, say=lambda s: None)
    summary = json.loads(run.path("report", "summary.json").read_text())
    final = next(e for e in collect(run).entries if e.name == summary["final_model"])
    return (refit_entry(run, final) or final).test().argmax(axis=1)


def study_trials(root: Path) -> dict[str, list[str]]:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal")))
    return {
        name: [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
        for name in optuna.get_all_study_names(storage)
    }


def metric_names(root: Path, study: str) -> list[str] | None:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal")))
    return optuna.load_study(study_name=study, storage=storage).metric_names


@pytest.mark.slow
def test_run_end_to_end_then_resume(tmp_path: Path, runs_env: Path, capsys) -> None:
    from ensemble.inference.predict import load_ensemble

    assert main(tiny_args(tmp_path, "e2e")) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[\d\d:\d\d data\] ", out, re.M) and "done in" in out  # stage lines, via logging
    assert "kaggle competitions submit" not in out  # 40 test digits: not a competition submission
    root = runs_env / "e2e"
    labels = check_submission(root / "submission.csv", n_rows=40)
    np.testing.assert_array_equal(labels, final_labels("e2e"))  # the submission is the final model's argmax
    trials = study_trials(root)
    assert trials["cnn"] == ["COMPLETE", "COMPLETE"]  # the plan's two members
    assert {"baseline-logreg", "baseline-knn"} <= set(trials) and all("COMPLETE" in v for v in trials.values())
    assert load_ensemble(root / "ensemble").members  # loads, hashes checked
    if (root / "ensemble-full").exists():  # a refit exists when the final model has CNNs
        full = load_ensemble(root / "ensemble-full")
        extra = full.manifest.extras
        assert len(extra) == 1 and extra[0].refit_full and extra[0].refit_full.rows == 300  # the anytime stage's one
    assert "Leaderboard (holdout)" in (root / "report" / "report.html").read_text()
    rows = list(csv.DictReader((root / "report" / "leaderboard.csv").open()))
    assert {"logreg", "knn", "cnn", "ensemble"} <= {r["family"] for r in rows}
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("data", "cnn_search", "baselines", "build", "report", "refit", "final"))
    mask = os.umask(0)
    os.umask(mask)
    for shared in ("submission.csv", "ensemble/manifest.json", "report/report.html", "report/summary.json"):
        assert stat.S_IMODE((root / shared).stat().st_mode) == 0o666 & ~mask, shared  # readable by others
    assert not list(root.glob(".*tmp*")) and not list((root / ".cache").glob("*"))  # no debris

    # The same command again has nothing left to do: no trial, no file changes.
    before = {p: p.read_bytes() for p in (root / "submission.csv", root / "stages.json", root / "optuna.journal")}
    assert main(tiny_args(tmp_path, "e2e")) == 0
    assert {p: p.read_bytes() for p in before} == before

    # A run stopped after the search (Ctrl-C, kill) continues with the stages left, and trains nothing new.
    data = json.loads((root / "stages.json").read_text())
    for s in ("build", "report", "refit"):
        del data["stages"][s]
    (root / "stages.json").write_text(json.dumps(data))
    (root / "submission.csv").unlink()
    shutil.rmtree(root / "ensemble")  # as if killed before the build
    assert main(tiny_args(tmp_path, "e2e")) == 0
    assert study_trials(root) == trials
    assert load_ensemble(root / "ensemble").members  # rebuilt from the same trials
    np.testing.assert_array_equal(check_submission(root / "submission.csv", n_rows=40), final_labels("e2e"))


@pytest.mark.slow
def test_run_through_a_symlinked_runs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "disk" / "runs"
    real.mkdir(parents=True)
    (tmp_path / "runs-link").symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "runs-link"))
    monkeypatch.chdir(tmp_path)
    assert main(tiny_args(tmp_path, "L")) == 0  # its own writer lock, taken again by build and report
    check_submission(real / "L" / "submission.csv", n_rows=40)


def test_run_with_a_changed_space_stops_before_any_trial(tmp_path: Path, runs_env: Path, capsys) -> None:
    args = tiny_args(tmp_path, "sp")  # its space: filters [4, 8]
    data, space = args[args.index("--data") + 1], tmp_path / "tiny.yaml"
    assert main(["search", "--run", "sp", "--data", data, "--space", str(space), "--trials", "1"]) == 0
    space.write_text(TINY_SPACE.replace("[4, 8]", "[4, 16]"))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'filters' is choices [4, 16]" in err and "choices [4, 8]" in err, err
    assert study_trials(runs_env / "sp") == {"cnn": ["COMPLETE"]}  # no new trial, no baseline started


@pytest.mark.slow
def test_run_cut_short_without_any_model_still_writes_a_submission(tmp_path: Path, runs_env: Path) -> None:
    args = tiny_args(tmp_path, "short", "--time-budget", "1s")
    args[args.index("baselines=logreg,knn")] = "baselines="  # no baselines: the only CNN trial gets cut
    assert main(args) == 0
    root = runs_env / "short"
    labels = check_submission(root / "submission.csv", n_rows=40)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["final_model"].startswith("baseline-fallback")  # the quick kNN fallback
    assert study_trials(root)["baseline-fallback"] == ["COMPLETE"]
    assert metric_names(root, "baseline-fallback") == ["val_accuracy"]  # optuna-dashboard's name for the value
    np.testing.assert_array_equal(labels, final_labels("short"))
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert stages["cnn_search"]["cut_short"] is True and "skipped" in stages["build"]


def test_trials_per_device_and_baseline_cores_settings() -> None:
    assert PRESETS["quick"].trials_per_device == 1 and PRESETS["best"].trials_per_device == "auto"
    assert settings_for("quick", {"trials_per_device": "auto"}).trials_per_device == "auto"
    assert settings_for("quick", {"trials_per_device": 3, "baseline_cores": "auto"}).baseline_cores == "auto"
    for bad in ({"trials_per_device": 0}, {"trials_per_device": "many"}, {"baseline_cores": True}):
        with pytest.raises(UsageError, match="--set"):
            settings_for("quick", bad)


KILL_BEFORE_SECOND_REPORT = """\
import os, signal, sys
import ensemble.pipeline.stages as stages
first = stages.report_stage
def report_stage(*args, again=False, **kwargs):
    if again:  # the refit is written and recorded; its report is next: killed here
        os.kill(os.getpid(), signal.SIGKILL)
    return first(*args, again=again, **kwargs)
stages.report_stage = report_stage
from ensemble.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_kill_between_the_refit_and_its_report_is_mended_by_a_rerun(tmp_path: Path, runs_env: Path) -> None:
    import subprocess
    import sys

    args = tiny_args(tmp_path, "window")
    args[args.index("baselines=logreg,knn")] = "baselines="  # CNNs only: the final model has a refit
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", KILL_BEFORE_SECOND_REPORT, *args], env=env, timeout=600)
    assert done.returncode == -9  # SIGKILLed in the window, after refit_stage recorded the refit
    root = runs_env / "window"
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert stages["refit"]["done"] and stages["report"]["done"] and (root / "ensemble-full").is_dir()
    assert json.loads((root / "report" / "summary.json").read_text())["refit_full"] is None  # pre-refit submission

    assert main(args) == 0  # the re-run
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["refit_full"] is not None
    refit = np.load(root / "ensemble-full" / "proba_test.npy").argmax(axis=1)
    np.testing.assert_array_equal(check_submission(root / "submission.csv", n_rows=40), refit)
    np.testing.assert_array_equal(refit, final_labels("window"))
