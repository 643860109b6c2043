"""Holdout statistics of the report: accuracy with its 95% interval, calibration, and the McNemar test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ensemble.metrics import log_loss

ECE_BINS = 15


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved near 1.0, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by bin size."""
    conf = p.max(axis=1)
    right = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(ece)


@dataclass(frozen=True)
class Score:
    """A model's holdout scores: accuracy with its 95% interval, log loss and calibration error."""

    holdout_accuracy: float
    ci95_low: float
    ci95_high: float
    holdout_correct: int
    holdout_logloss: float
    ece: float


@dataclass(frozen=True)
class McNemarTest:
    """The exact McNemar test of two models: a_only = A right & B wrong, b_only = A wrong & B right."""

    a_only: int
    b_only: int
    p_value: float
    n: int


def score(y: np.ndarray, p: np.ndarray) -> Score:
    """Holdout accuracy with its 95% interval, log loss and calibration error."""
    correct = int((p.argmax(axis=1) == y).sum())
    lo, hi = wilson_interval(correct, len(y))
    return Score(
        holdout_accuracy=correct / len(y),
        ci95_low=lo,
        ci95_high=hi,
        holdout_correct=correct,
        holdout_logloss=log_loss(y, p),
        ece=expected_calibration_error(y, p),
    )


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> McNemarTest:
    """Exact McNemar test: b = A right & B wrong, c = A wrong & B right; two-sided binomial p-value."""
    from scipy.stats import binomtest

    a_ok, b_ok = pred_a == y, pred_b == y
    b, c = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return McNemarTest(a_only=b, b_only=c, p_value=p, n=len(y))


def mcnemar_words(test: McNemarTest, a: str, b: str) -> str:
    """The McNemar result in plain words."""
    n, x, z, p = test.n, test.a_only, test.b_only, test.p_value
    head = f"On the {n:,} holdout digits, {a} got {x} right that {b} got wrong, and {b} got {z} right that {a} missed."
    if x + z == 0:
        return head + " They make exactly the same mistakes, so there is no difference to test."
    chance = (
        f"If both were equally accurate, a split at least this uneven would happen by chance with probability {p:.3g}"
    )
    if p < 0.05:
        better = a if x > z else b
        return f"{head} {chance} (exact McNemar test), so {better} is significantly more accurate (p < 0.05)."
    return f"{head} {chance} (exact McNemar test): the difference is not statistically significant at the 5% level."
