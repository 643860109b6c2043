from __future__ import annotations

import numpy as np
import pytest

from ensemble.report.stats import expected_calibration_error, mcnemar, mcnemar_words, score, wilson_interval


def test_wilson_interval_is_inside_0_1_and_contains_the_rate() -> None:
    lo, hi = wilson_interval(4190, 4200)
    assert 0.99 < lo < 4190 / 4200 < hi < 1.0
    assert wilson_interval(40, 40)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_ece_is_zero_for_calibrated_and_large_for_overconfident() -> None:
    y = np.array([0, 1] * 50)
    sure = np.eye(10)[y]
    assert expected_calibration_error(y, sure) == pytest.approx(0.0)
    wrong = np.eye(10)[1 - y]
    assert expected_calibration_error(y, wrong) == pytest.approx(1.0)


def test_mcnemar_counts_disagreements_and_says_it_in_words() -> None:
    y = np.zeros(100, int)
    a = y.copy()
    b = y.copy()
    b[:20] = 1  # b wrong on 20 that a gets right
    a[95:] = 1  # a wrong on 5 that b gets right
    t = mcnemar(y, a, b)
    assert (t.a_only, t.b_only) == (20, 5)
    assert t.p_value < 0.01
    words = mcnemar_words(t, "ensemble", "cnn-3")
    assert "ensemble got 20 right that cnn-3 got wrong" in words and "significantly more accurate" in words
    same = mcnemar(y, a, a)
    assert "same mistakes" in mcnemar_words(same, "x", "y")


def test_score_counts_the_holdout_digits_right() -> None:
    y = np.array([0, 1, 2, 3])
    p = np.eye(10)[[0, 1, 2, 9]] * 0.9 + 0.01
    s = score(y, p)
    assert s.holdout_correct == 3 and s.holdout_accuracy == pytest.approx(0.75)
    assert s.ci95_low < 0.75 < s.ci95_high
