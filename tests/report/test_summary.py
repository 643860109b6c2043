from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.report.rows import Entry
from ensemble.report.stats import Score
from ensemble.report.submission import check_submission
from ensemble.report.summary import rank


def test_rank_breaks_accuracy_ties_by_cost() -> None:
    def entry(name: str, correct: int, ms: float | None) -> Entry:
        e = Entry(name, "cnn", "cnn", lambda: None, lambda: None, predict_ms=ms)
        e.metrics = Score(correct / 100, 0.0, 1.0, correct, 0.1, 0.0)
        return e

    order = [e.name for e in rank([entry("slow", 99, 9.0), entry("fast", 99, 1.0), entry("best", 100, 50.0)])]
    assert order == ["best", "fast", "slow"]


def fake_trial(run, study: str, number: int, accuracy: float, attrs: dict, seed: int) -> Path:
    """A completed trial with saved probabilities that get ``accuracy`` of each part right."""
    import optuna

    from ensemble.search.artifacts import save_probas, trial_dir
    from ensemble.search.storage import open_storage

    rng = np.random.default_rng(seed)
    folder = trial_dir(run, study, number)
    probas = {}
    for part, y in (("val", run.part("val")[1]), ("holdout", run.part("holdout")[1]), ("test", None)):
        n = len(run.x_test) if y is None else len(y)
        labels = rng.integers(0, 10, n) if y is None else np.where(rng.random(n) < accuracy, y, (y + 1) % 10)
        p = np.full((n, 10), 0.02, np.float32)
        p[np.arange(n), labels] = 0.82
        probas[part] = p
    save_probas(folder, probas)
    (folder / "model.bin").write_bytes(b"x" * 1000)
    st = optuna.create_study(study_name=study, storage=open_storage(run), direction="maximize", load_if_exists=True)
    val_acc = float((probas["val"].argmax(1) == run.part("val")[1]).mean())
    user = {"val_accuracy": val_acc, "val_logloss": 0.5, "artifact_dir": str(folder), **attrs}
    st.add_trial(optuna.trial.create_trial(value=val_acc, user_attrs=user, intermediate_values={1: 0.5, 2: val_acc}))
    return folder


@pytest.fixture
def run(tmp_path: Path, runs_env: Path):
    data = write_dataset(tmp_path / "data", n_train=400, n_test=30, seed=2)
    r = open_run("rep", data=str(data), val_frac=0.25, holdout_frac=0.25, say=lambda s: None)
    for fam, acc, seed in (("logreg", 0.7, 1), ("knn", 0.8, 2)):
        attrs = {"family": fam, "fit_seconds": 1.0, "predict_seconds": 0.1, "n_train": 200, "stage": "search"}
        attrs["device"] = "cpu"
        fake_trial(r, f"baseline-{fam}", 0, acc, attrs, seed)
    for i, acc in enumerate((0.9, 0.85, 0.6)):
        attrs = {"train_seconds": 10.0 + i, "predict_seconds": 0.2, "params": 1000 + i, "n_train": 200}
        attrs |= {"backend": "jax", "device": "gpu"}
        fake_trial(r, "cnn", i, acc, attrs, 10 + i)
    return r


def add_ensemble(run, members: list[int]) -> None:
    """A built-ensemble folder as ``ensemble build`` leaves it (without the Keras members)."""
    from ensemble.combine.manifest import FORMAT, Manifest, write_manifest
    from ensemble.search.artifacts import load_proba

    folder = run.path("ensemble")
    (folder / "members").mkdir(parents=True)
    trials = [run.path("models", "cnn", f"trial-{i:04d}") for i in members]
    for part in ("val", "holdout", "test"):
        p = np.mean([load_proba(t, part) for t in trials], axis=0)
        np.save(folder / f"proba_{part}.npy", p.astype(np.float32))
    metrics = {
        "best_single": {
            "member": "cnn-trial-0000",
            "val": {"accuracy": 0.9, "logloss": 0.5},
            "holdout": {"accuracy": 0.9, "logloss": 0.4},
        },
        "top_k_equal": {"val": {"accuracy": 0.91, "logloss": 0.4}, "holdout": {"accuracy": 0.92, "logloss": 0.3}},
        "top_k_equal_tta": {"val": {"accuracy": 0.92, "logloss": 0.4}, "holdout": {"accuracy": 0.93, "logloss": 0.3}},
        "top_k_greedy_tta": {"val": {"accuracy": 0.93, "logloss": 0.4}, "holdout": {"accuracy": 0.93, "logloss": 0.3}},
    }
    entries = [
        {"name": f"cnn-trial-{i:04d}", "kind": "cnn", "study": "cnn", "trial": i, "weight": 1.0, "params": 1000}
        for i in members
    ]
    manifest = {"format": FORMAT, "members": entries, "weights": {"mode": "greedy"}}
    manifest["tta"] = {"views": ["identity", "rot:8"]}
    write_manifest(folder, Manifest.from_json({**manifest, "metrics": metrics, "artifacts": {}}))


def test_report_writes_leaderboard_html_md_and_a_checked_submission(run, capsys) -> None:
    add_ensemble(run, [0, 1])
    assert main(["report", "--run", "rep"]) == 0
    out = capsys.readouterr().out
    assert "Holdout leaderboard" in out and "final model:" in out and "McNemar" in out
    folder = run.path("report")
    rows = list(csv.DictReader((folder / "leaderboard.csv").open()))
    names = [r["model"] for r in rows]
    assert {"baseline-logreg-trial-0000", "baseline-knn-trial-0000", "ensemble (TTA)", "ensemble (no TTA)"} <= set(
        names
    )
    assert {r["family"] for r in rows} == {"logreg", "knn", "cnn", "ensemble"}
    trained_on = {r["family"]: r["device"] for r in rows}  # what each model trained on, from its trial
    assert trained_on == {"logreg": "cpu", "knn": "cpu", "cnn": "jax/gpu", "ensemble": "jax/gpu"}
    accs = [float(r["holdout_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert all(float(r["ci95_low"]) <= float(r["holdout_accuracy"]) <= float(r["ci95_high"]) for r in rows)
    html = (folder / "report.html").read_text()
    assert "Leaderboard (holdout)" in html and "data:image/png;base64," in html
    assert "<img" in html and 'src="img/' not in html and "http" not in html.split("<body>")[1]  # self-contained
    for section in (
        "Per-class accuracy",
        "Confusion matrix",
        "Misclassified",
        "optimization history",
        "learning curves",
    ):
        assert section in html
    md = (folder / "report.md").read_text()
    assert "| # | model |" in md and "(img/confusion.png)" in md and (folder / "img" / "confusion.png").is_file()
    labels = check_submission(run.path("submission.csv"), n_rows=len(run.x_test))
    best = rows[0]
    assert best["model"] in out.split("final model:")[1]
    assert len(labels) == len(run.x_test)


def test_report_without_ensemble_or_models(run, runs_env: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", "--run", "rep"]) == 0
    assert "No ensemble was built" in (run.path("report", "report.html")).read_text()
    data = write_dataset(tmp_path / "d2", n_train=100, n_test=10, seed=3)
    assert main(["report", "--run", "empty", "--data", str(data)]) == 2
    assert "no model with holdout predictions" in capsys.readouterr().err


def _probas(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 10)).astype(np.float32)


def test_final_submission_is_checked_before_it_replaces_the_old_one(run, monkeypatch: pytest.MonkeyPatch) -> None:
    from ensemble.errors import DataError
    from ensemble.report import submission
    from ensemble.report.final import write_final_submission

    n = len(run.x_test)
    first = _probas(n, 1)
    path, labels = write_final_submission(run, Entry("a", "cnn", "cnn", lambda: None, lambda: first))
    np.testing.assert_array_equal(labels, first.argmax(axis=1))
    np.testing.assert_array_equal(check_submission(path, n_rows=n), first.argmax(axis=1))
    before = path.read_bytes()
    folder_before = sorted(p.name for p in path.parent.iterdir())

    writer = submission._csv_text
    monkeypatch.setattr(submission, "_csv_text", lambda lab: writer(lab).rsplit("\n", 2)[0] + "\n")  # drop a row
    second = Entry("b", "cnn", "cnn", lambda: None, lambda: _probas(n, 2))
    failed = rf"submission\.csv: new submission failed its check.*1 of {n} ImageIds missing"
    with pytest.raises(DataError, match=failed):
        write_final_submission(run, second)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == folder_before  # no temporary file left behind

    monkeypatch.setattr(submission, "_csv_text", writer)
    path, labels = write_final_submission(run, second)
    np.testing.assert_array_equal(check_submission(path, n_rows=n), _probas(n, 2).argmax(axis=1))
    assert path.read_bytes() != before


def test_trained_on_names_each_cnns_gpu_and_the_gpus_of_an_ensembles_members(tmp_path: Path, runs_env: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=400, n_test=30, seed=2)
    r = open_run("gpus", data=str(data), val_frac=0.25, holdout_frac=0.25, say=lambda s: None)
    for i, acc in enumerate((0.9, 0.85, 0.8)):
        attrs = {"train_seconds": 10.0, "predict_seconds": 0.2, "params": 1000, "n_train": 200}
        fake_trial(r, "cnn", i, acc, attrs | {"backend": "jax", "device": f"gpu:{2 * i}"}, 10 + i)
    add_ensemble(r, [0, 1, 2])
    assert main(["report", "--run", "gpus"]) == 0
    rows = {row["model"]: row["device"] for row in csv.DictReader(r.path("report", "leaderboard.csv").open())}
    assert rows["cnn-trial-0000"] == "jax/gpu:0" and rows["cnn-trial-0002"] == "jax/gpu:4"
    assert rows["ensemble (TTA)"] == "jax/gpu:0,2,4"
