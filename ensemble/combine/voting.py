"""Soft voting over class probabilities, with equal weights or Caruana greedy selection.

``SoftVoter`` follows scikit-learn's ``VotingClassifier(voting="soft")`` conventions
(keyword-only parameters, validation in ``fit``, ``weights_`` learnt attribute) but works on
members' saved probabilities rather than on estimators, so members of any kind (Keras CNNs,
scikit-learn or XGBoost baselines) can be mixed.

Greedy selection is Caruana et al. (2004) forward selection *with replacement*, as in
auto-sklearn's and AutoGluon's ensemble selection: start empty, repeatedly add the member
(possibly again) whose addition gives the best validation score of the running average
(log loss, or accuracy with log loss breaking ties), and keep the best iteration. Ties are
broken by a seeded random order, so the result is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ensemble.errors import InvalidValueError
from ensemble.metrics import EPS


def _as_stack(probas: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(M, N, C) float64 array from a list of (N, C) probability arrays, validated."""
    arrs = [np.asarray(p, dtype=np.float64) for p in probas]
    if not arrs:
        raise InvalidValueError("soft voting needs at least one member's probabilities")
    shape = arrs[0].shape
    for i, a in enumerate(arrs):
        if a.ndim != 2 or a.shape != shape:
            raise InvalidValueError(f"member {i}: probabilities of shape {a.shape}, expected {shape} (N, classes)")
        if not np.all(np.isfinite(a)):
            raise InvalidValueError(f"member {i}: probabilities contain NaN or infinity")
    return np.stack(arrs)


def check_weights(weights: Sequence[float] | np.ndarray | None, n_members: int) -> np.ndarray:
    """Weights as a float64 vector summing to 1 (None: equal)."""
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,):
        raise InvalidValueError(f"got {w.size} weights for {n_members} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InvalidValueError(f"weights must be finite, non-negative and not all zero: {w.tolist()}")
    return w / w.sum()


def soft_vote(
    probas: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Weighted average of members' probabilities (weights are normalised to sum to 1)."""
    stack = _as_stack(probas)
    w = check_weights(weights, len(stack))
    return np.tensordot(w, stack, axes=1)


@dataclass(frozen=True)
class GreedyResult:
    """Outcome of greedy selection: normalised weights, pick counts, and per iteration the picked
    member, validation log loss and accuracy of the running average."""

    weights: np.ndarray
    counts: np.ndarray
    losses: list[float]
    accuracies: list[float]
    picks: list[int]
    best_iter: int


METRICS = ("logloss", "accuracy")


def greedy_weights(
    probas: Sequence[np.ndarray] | np.ndarray,
    y: np.ndarray,
    *,
    n_iter: int = 50,
    seed: int = 0,
    metric: str = "logloss",
) -> GreedyResult:
    """Caruana forward selection with replacement.

    ``metric="logloss"`` minimises validation log loss; ``"accuracy"`` maximises validation
    accuracy with log loss breaking ties (AutoGluon selects on its eval metric the same way).
    """
    stack = _as_stack(probas)
    y = np.asarray(y, dtype=np.int64)
    if len(y) != stack.shape[1]:
        raise InvalidValueError(f"{len(y)} labels for probabilities of {stack.shape[1]} rows")
    if n_iter < 1:
        raise InvalidValueError(f"n_iter must be >= 1, got {n_iter}")
    if metric not in METRICS:
        raise InvalidValueError(f"metric must be one of {METRICS}, got {metric!r}")
    order = np.random.default_rng(seed).permutation(len(stack))  # tie-break order
    rows = np.arange(len(y))
    stack = stack / np.maximum(stack.sum(axis=2, keepdims=True), EPS)
    running = np.zeros(stack.shape[1:])
    picks: list[int] = []
    losses: list[float] = []
    accs: list[float] = []
    keys: list[tuple[float, ...]] = []
    for k in range(1, n_iter + 1):
        cand = (running[None] + stack) / k  # (M, N, C)
        loss = -np.mean(np.log(np.clip(cand[:, rows, y], EPS, 1.0)), axis=1)
        acc = np.mean(cand.argmax(axis=2) == y[None], axis=1)
        key = [(round(float(-acc[m]), 12), round(float(loss[m]), 12)) for m in range(len(stack))]
        if metric == "logloss":
            key = [(kk[1],) for kk in key]
        best = min(order, key=lambda m: key[m])  # first in seeded order wins ties
        picks.append(int(best))
        running += stack[best]
        losses.append(float(loss[best]))
        accs.append(float(acc[best]))
        keys.append(key[best])
    best_iter = min(range(n_iter), key=lambda i: keys[i]) + 1
    counts = np.bincount(picks[:best_iter], minlength=len(stack))
    return GreedyResult(counts / counts.sum(), counts, losses, accs, picks, best_iter)


class SoftVoter:
    """Soft voting over precomputed member probabilities.

    Parameters (keyword-only): ``weights`` is ``"equal"``, ``"greedy"`` or an explicit sequence;
    ``n_iter``, ``seed`` and ``metric`` (logloss or accuracy) control greedy selection.
    ``fit(probas, y)`` sets ``weights_`` (sum 1) and, for greedy, ``greedy_`` (a :class:`GreedyResult`).
    """

    def __init__(
        self, *, weights: str | Sequence[float] = "equal", n_iter: int = 50, seed: int = 0, metric: str = "logloss"
    ) -> None:
        self.weights = weights
        self.n_iter = n_iter
        self.seed = seed
        self.metric = metric

    def _validate(self) -> None:
        if isinstance(self.weights, str) and self.weights not in ("equal", "greedy"):
            raise InvalidValueError(f"weights must be 'equal', 'greedy' or a sequence of numbers, got {self.weights!r}")
        if self.metric not in METRICS:
            raise InvalidValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not isinstance(self.n_iter, int | np.integer) or self.n_iter < 1:
            raise InvalidValueError(f"n_iter must be a positive integer, got {self.n_iter!r}")

    def fit(self, probas: Sequence[np.ndarray] | np.ndarray, y: np.ndarray) -> SoftVoter:
        self._validate()
        stack = _as_stack(probas)
        if len(np.asarray(y)) != stack.shape[1]:
            raise InvalidValueError(f"{len(np.asarray(y))} labels for probabilities of {stack.shape[1]} rows")
        if isinstance(self.weights, str) and self.weights == "greedy":
            self.greedy_ = greedy_weights(stack, y, n_iter=self.n_iter, seed=self.seed, metric=self.metric)
            self.weights_ = self.greedy_.weights
        elif isinstance(self.weights, str):
            self.weights_ = check_weights(None, len(stack))
        else:
            self.weights_ = check_weights(self.weights, len(stack))
        self.n_members_ = len(stack)
        return self

    def _check_fitted(self, probas: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise InvalidValueError("SoftVoter is not fitted yet; call fit(probas, y) first")
        stack = _as_stack(probas)
        if len(stack) != self.n_members_:
            raise InvalidValueError(f"fitted on {self.n_members_} members, got {len(stack)}")
        return stack

    def predict_proba(self, probas: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        stack = self._check_fitted(probas)
        return np.tensordot(self.weights_, stack, axes=1)

    def predict(self, probas: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(probas), axis=1)
