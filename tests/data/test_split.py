from __future__ import annotations

import numpy as np
import pytest

from ensemble.data.split import load_split, save_split, stratified_split
from ensemble.errors import DataError, InvalidValueError


def _labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, 5000).astype(np.uint8)


def test_same_seed_same_split_other_seed_differs() -> None:
    y = _labels()
    a, b = stratified_split(y, seed=1), stratified_split(y, seed=1)
    c = stratified_split(y, seed=2)
    for part in ("train", "val", "holdout"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.val, c.val)


def test_parts_are_disjoint_cover_and_stratified() -> None:
    y = _labels()
    s = stratified_split(y, seed=0, val_frac=0.1, holdout_frac=0.2)
    allidx = np.concatenate([s.train, s.val, s.holdout])
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))
    counts = np.bincount(y, minlength=10)
    for part, frac in (("val", 0.1), ("holdout", 0.2)):
        got = np.bincount(y[getattr(s, part)], minlength=10)
        assert np.all(np.abs(got - counts * frac) <= 1)


def test_json_round_trip(tmp_path) -> None:
    s = stratified_split(_labels(), seed=5, fingerprint="abc")
    save_split(s, tmp_path / "split.json")
    t = load_split(tmp_path / "split.json")
    assert t.fingerprint == "abc" and t.seed == 5
    np.testing.assert_array_equal(s.holdout, t.holdout)


@pytest.mark.parametrize("val,hold", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0), (0.0, 0.1), (0.1, 0.0), (0.0, 0.0)])
def test_bad_fractions(val: float, hold: float) -> None:
    with pytest.raises(InvalidValueError, match=r"split fractions .*each must be above 0 and their sum below 1"):
        stratified_split(_labels(), val_frac=val, holdout_frac=hold)


def test_a_part_left_empty_is_refused() -> None:
    with pytest.raises(DataError, match=r"30 labeled rows are too few .*the holdout part would be empty"):
        stratified_split(np.arange(30) % 10, val_frac=0.4, holdout_frac=0.1)
