from __future__ import annotations

import numpy as np
import pytest

from ensemble.combine.voting import SoftVoter, greedy_weights, soft_vote
from ensemble.metrics import accuracy, log_loss


def _probs(n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, 10))
    return p / p.sum(axis=1, keepdims=True)


def test_equal_weights_give_the_mean() -> None:
    ps = [_probs(7, s) for s in range(3)]
    np.testing.assert_allclose(soft_vote(ps), np.mean(ps, axis=0))
    np.testing.assert_allclose(SoftVoter(weights="equal").fit(ps, np.zeros(7, int)).predict_proba(ps), np.mean(ps, 0))


def test_weighted_arithmetic_and_normalisation() -> None:
    a, b = _probs(5, 0), _probs(5, 1)
    np.testing.assert_allclose(soft_vote([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(soft_vote([a, b], [0.3, 0.1]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(soft_vote([a, b], [1, 0]), a)
    np.testing.assert_allclose(soft_vote([a, b]).sum(axis=1), 1.0)


def test_validation_errors() -> None:
    a = _probs(5, 0)
    with pytest.raises(ValueError, match="2 weights for 1 members"):
        soft_vote([a], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        soft_vote([a, a], [1, -1])
    with pytest.raises(ValueError, match="member 1: probabilities of shape"):
        soft_vote([a, a[:3]])
    with pytest.raises(ValueError, match="weights must be"):
        SoftVoter(weights="best").fit([a], np.zeros(5, int))
    with pytest.raises(ValueError, match="not fitted"):
        SoftVoter().predict_proba([a])
    with pytest.raises(TypeError):
        SoftVoter("equal")  # keyword-only, as in scikit-learn


def _row(true: int, p_true: float) -> np.ndarray:
    r = np.full(10, (1 - p_true) / 9)
    r[true] = p_true
    return r


def test_greedy_known_answer() -> None:
    # A is sure on row 0 and unsure on row 1, B the reverse, C is bad everywhere: the best
    # average is A and B half each (loss -2 ln 0.7 = 0.713 < A alone 0.798 < 2A+B 0.722).
    y = np.array([0, 1])
    a = np.stack([_row(0, 0.9), _row(1, 0.5)])
    b = np.stack([_row(0, 0.5), _row(1, 0.9)])
    c = np.stack([_row(0, 0.2), _row(1, 0.2)])
    res = greedy_weights([a, b, c], y, n_iter=10, seed=0)
    np.testing.assert_allclose(res.weights, [0.5, 0.5, 0.0])
    assert res.best_iter == 2
    assert res.losses[1] == pytest.approx(-np.log(0.7))
    voter = SoftVoter(weights="greedy", n_iter=10).fit([a, b, c], y)
    np.testing.assert_allclose(voter.weights_, [0.5, 0.5, 0.0])
    assert voter.predict([a, b, c]).tolist() == [0, 1]


def test_greedy_uses_replacement_and_is_deterministic() -> None:
    # The best mix here is 2:1, which needs the same member picked twice.
    y = np.array([0, 1, 2])
    rng = np.random.default_rng(3)
    ps = [_probs(3, s) for s in range(4)]
    ps[0] = np.stack([_row(0, 0.95), _row(1, 0.95), _row(2, 0.3)])
    ps[1] = np.stack([_row(0, 0.3), _row(1, 0.3), _row(2, 0.95)])
    del rng
    r1 = greedy_weights(ps, y, n_iter=30, seed=7)
    r2 = greedy_weights(ps, y, n_iter=30, seed=7)
    np.testing.assert_array_equal(r1.weights, r2.weights)
    assert r1.counts.max() >= 2
    assert log_loss(y, soft_vote(ps, r1.weights)) <= min(log_loss(y, p) for p in ps)


def test_greedy_ties_follow_the_seed() -> None:
    y = np.array([0, 1])
    a = np.stack([_row(0, 0.8), _row(1, 0.8)])
    picks = {int(np.argmax(greedy_weights([a, a.copy()], y, n_iter=1, seed=s).counts)) for s in range(8)}
    assert picks == {0, 1}


def test_metrics() -> None:
    y = np.array([0, 1])
    p = np.stack([_row(0, 0.5), _row(2, 0.5)])
    assert accuracy(y, p) == 0.5
    assert log_loss(y, p) == pytest.approx(-(np.log(0.5) + np.log(0.5 / 9)) / 2)


def test_greedy_on_accuracy_breaks_ties_with_log_loss() -> None:
    # A and B are each right on 2 of 3 rows, in different places; C is right on all 3 rows but
    # barely. By log loss the sharp A wins alone; by accuracy the (always right) C must be picked.
    y = np.array([0, 1, 2])
    a = np.stack([_row(0, 0.99), _row(1, 0.99), _row(0, 0.99)])
    b = np.stack([_row(1, 0.99), _row(1, 0.99), _row(2, 0.99)])
    c = np.stack([_row(0, 0.2), _row(1, 0.2), _row(2, 0.2)])
    by_acc = greedy_weights([a, b, c], y, n_iter=10, metric="accuracy")
    assert accuracy(y, soft_vote([a, b, c], by_acc.weights)) == 1.0
    assert by_acc.accuracies[by_acc.best_iter - 1] == 1.0
    by_loss = greedy_weights([a, b, c], y, n_iter=10, metric="logloss")
    assert by_loss.losses[by_loss.best_iter - 1] == min(by_loss.losses)
    with pytest.raises(ValueError, match="metric must be one of"):
        greedy_weights([a], y, metric="f1")
