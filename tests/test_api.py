"""The Python API: fit, load, the Result's leaderboard and predictions; arrays as data; the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_digits

import ensemble
from ensemble.api import Result, load
from ensemble.data.arrays import images_784, save_arrays
from ensemble.data.load import load_dataset
from ensemble.errors import DataError, UsageError
from ensemble.report.submission import check_submission

pytest.importorskip("keras")


def test_fit_returns_the_finished_run_and_load_gives_the_same(tiny_finished_run) -> None:
    result, _ = tiny_finished_run
    assert isinstance(result, Result) and result.run == "tiny"
    assert load(result.path) == result  # by folder
    assert 0.0 <= result.holdout.ci95_low <= result.holdout_accuracy <= result.holdout.ci95_high <= 1.0
    assert result.holdout.correct == round(result.holdout_accuracy * result.holdout.n)
    assert result.n_test == 40 and not result.competition_shaped  # not Kaggle's 28,000: no submit line


def test_leaderboard_is_a_dataframe_of_every_model_best_first(tiny_finished_run) -> None:
    result, _ = tiny_finished_run
    board = result.leaderboard()
    assert list(board.index) == list(range(1, len(board) + 1))
    assert {"logreg", "knn", "cnn", "ensemble"} <= set(board["family"])
    assert result.final_model in set(board["model"])
    assert board["holdout_accuracy"].notna().all()


def test_predictions_are_the_submissions_labels(tiny_finished_run) -> None:
    result, x_test = tiny_finished_run
    proba = result.predict_proba(x_test)
    assert proba.shape == (40, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    submitted = check_submission(result.submission, n_rows=40)
    np.testing.assert_array_equal(result.predict(x_test), submitted)  # the stored submission is its argmax
    np.testing.assert_array_equal(result.predict(x_test.reshape(40, 784)), submitted)  # (n, 784) too


def test_predict_refuses_images_scaled_to_0_1(tiny_finished_run) -> None:
    result, x_test = tiny_finished_run
    with pytest.raises(DataError, match="0-255"):
        result.predict(x_test / 255.0)


def test_load_by_name_and_unknown_runs(tiny_finished_run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _ = tiny_finished_run
    monkeypatch.setenv("ENSEMBLE_RUNS", str(result.path.parent))
    assert ensemble.load("tiny") == result
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path))
    with pytest.raises(UsageError, match="no such run"):
        ensemble.load("tiny")


def test_arrays_become_a_dataset_folder_with_the_same_digits(tmp_path: Path) -> None:
    x, y = synthetic_digits(60, 1)
    folder = save_arrays(tmp_path, x[:50], y[:50], x[50:].reshape(10, 784))
    ds = load_dataset(folder)
    np.testing.assert_array_equal(ds.x_train, x[:50])
    np.testing.assert_array_equal(ds.y_train, y[:50])
    np.testing.assert_array_equal(ds.x_test, x[50:])
    assert save_arrays(tmp_path, x[:50], y[:50], x[50:]) == folder  # the same arrays: the same folder
    with pytest.raises(DataError, match="labels"):
        save_arrays(tmp_path, x[:50], y[:49], x[50:])
    with pytest.raises(DataError, match="shape"):
        images_784(np.zeros((3, 27, 27)), "x")


def _public_modules() -> list[str]:
    names = ["ensemble"]
    for info in pkgutil.walk_packages(ensemble.__path__, "ensemble."):
        names.append(info.name)
    return names


def test_every_docstring_example_runs(tiny_finished_run) -> None:
    result, x_test = tiny_finished_run
    globs = {"RUN": result.path, "images": x_test[:5]}
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tried = 0
    for name in _public_modules():
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for test in finder.find(module, name, globs=dict(globs)):
            runner.run(test)
            tried += len(test.examples)
    failed, _ = runner.summarize(verbose=False)
    assert tried >= 3 and failed == 0
