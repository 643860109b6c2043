"""Explicit, shared preprocessing for classical models: pixel scaling and optional PCA.

Every baseline sees the same two steps, fitted on the run's training part only:

1. ``PixelScaler``: (N, 28, 28) uint8 images -> (N, 784) float32 in [0, 1];
2. optional ``PCA(n_components)`` (optionally whitened), which replaces the pixels or, with
   ``pca_append``, is appended to them (trees split on both local pixels and global components).

The steps form a scikit-learn ``Pipeline``: for scikit-learn models it is the head of
the saved model pipeline; for XGBoost it is saved next to the booster with joblib.
Search-space keys ``pca_components`` (0 or absent: no PCA), ``pca_whiten`` and ``pca_append``
control it.

scikit-learn is imported when this module is, so the CLI imports it lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, Pipeline

#: Search-space keys that configure preprocessing rather than the model.
PREPROCESS_KEYS = ("pca_components", "pca_whiten", "pca_append")


class PixelScaler(TransformerMixin, BaseEstimator):
    """Flatten images to rows and scale uint8 pixels 0..255 to float32 0..1 (stateless)."""

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> PixelScaler:
        self.n_features_in_ = int(np.prod(np.shape(x)[1:]))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return x.reshape(len(x), -1).astype(np.float32) / np.float32(255.0)


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split sampled params into (preprocessing params, model params)."""
    pre = {k: v for k, v in params.items() if k in PREPROCESS_KEYS}
    rest = {k: v for k, v in params.items() if k not in PREPROCESS_KEYS}
    return pre, rest


def make_preprocessor(
    *, pca_components: int | None = None, pca_whiten: bool = False, pca_append: bool = False, seed: int = 0
) -> Pipeline:
    """An unfitted pipeline: pixel scaling, then PCA when ``pca_components`` is a positive int."""
    steps: list[tuple[str, Any]] = [("scale", PixelScaler())]
    if pca_components:
        n = int(pca_components)
        if n < 1 or n > 784:
            raise ValueError(f"pca_components must be between 1 and 784, got {n}")
        pca = PCA(n_components=n, whiten=bool(pca_whiten), random_state=seed)
        if pca_append:
            steps.append(("features", FeatureUnion([("pixels", "passthrough"), ("pca", pca)])))
        else:
            steps.append(("pca", pca))
    return Pipeline(steps)


def fit_preprocessor(x_train: np.ndarray, *, seed: int = 0, **params: Any) -> Pipeline:
    """Build the preprocessing from ``params`` and fit it on training images only."""
    return make_preprocessor(seed=seed, **params).fit(x_train)


def describe(pre: Pipeline) -> str:
    """One-line summary, e.g. ``scale/255 + PCA(40)``."""
    parts = ["scale/255"]
    steps = pre.named_steps
    pca = steps.get("pca")
    if "features" in steps:
        pca = dict(steps["features"].transformer_list)["pca"]
    if pca is not None:
        text = f"PCA({pca.n_components}{', whiten' if pca.whiten else ''})"
        parts.append(f"[pixels, {text}]" if "features" in steps else text)
    return " + ".join(parts)
