from __future__ import annotations

import csv
import json
import os
import re
import stat
import time
from pathlib import Path

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
    sets += [f"plan={plan}"]
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


def test_run_end_to_end_then_resume(tmp_path: Path, runs_env: Path, capsys) -> None:
    t0 = time.perf_counter()
    assert main(tiny_args(tmp_path, "e2e")) == 0
    first = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "optuna-dashboard" in out and "Holdout leaderboard" in out and "kaggle competitions submit" in out
    root = runs_env / "e2e"
    labels = check_submission(root / "submission.csv", n_rows=40)
    assert len(labels) == 40
    assert "Leaderboard (holdout)" in (root / "report" / "report.html").read_text()
    rows = list(csv.DictReader((root / "report" / "leaderboard.csv").open()))
    assert {"logreg", "knn", "cnn", "ensemble"} <= {r["family"] for r in rows}
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("data", "cnn_search", "baselines", "build", "report"))
    mask = os.umask(0)
    os.umask(mask)
    for shared in ("submission.csv", "ensemble/manifest.json", "report/report.html", "report/summary.json"):
        assert stat.S_IMODE((root / shared).stat().st_mode) == 0o666 & ~mask, shared  # readable by others
    assert not list(root.glob(".*tmp*")) and not list((root / ".cache").glob("*"))  # no debris

    t0 = time.perf_counter()
    assert main(tiny_args(tmp_path, "e2e")) == 0
    again = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "already finished" in out and "report already written" in out
    assert again < 5 and again < first / 3

    # A run stopped after the search (Ctrl-C, kill) continues with the stages left.
    data = json.loads((root / "stages.json").read_text())
    for s in ("build", "report"):
        del data["stages"][s]
    (root / "stages.json").write_text(json.dumps(data))
    (root / "submission.csv").unlink()
    assert main(tiny_args(tmp_path, "e2e")) == 0
    out = capsys.readouterr().out
    assert "CNN search and baselines already finished" in out and "Study 'cnn'" not in out
    assert re.search(r"ensemble of \d members written", out)
    check_submission(root / "submission.csv", n_rows=40)


def test_run_cut_short_without_any_model_still_writes_a_submission(tmp_path: Path, runs_env: Path, capsys) -> None:
    args = tiny_args(tmp_path, "short", "--time-budget", "1s")
    args[args.index("baselines=logreg,knn")] = "baselines="  # no baselines: the only CNN trial gets cut
    assert main(args) == 0
    out = capsys.readouterr().out
    root = runs_env / "short"
    check_submission(root / "submission.csv", n_rows=40)
    assert "stopping the search" in out and "fallback kNN" in out and "final model: baseline-fallback" in out
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert stages["cnn_search"]["cut_short"] is True and "skipped" in stages["build"]
