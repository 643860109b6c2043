"""The scores every stage uses: accuracy and log loss of class probabilities (one definition each)."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row negative log probability of the true class (rows renormalised, clipped at 1e-7)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    true = p[np.arange(len(y)), y] / np.maximum(p.sum(axis=1), EPS)
    return -np.log(np.clip(true, EPS, 1.0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of :func:`row_log_loss`."""
    return float(np.mean(row_log_loss(y, p)))


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Fraction of rows whose most probable class is the label."""
    return float(np.mean(np.argmax(p, axis=1) == np.asarray(y)))
