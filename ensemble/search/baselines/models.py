"""Classical model families for the baseline studies: how each one is built (saving and loading: ``saved``).

A family maps sampled search-space params (see ``search_spaces/<family>.yaml``) to an
unfitted estimator. Heavy libraries are imported inside functions only.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ensemble.backends import is_installed
from ensemble.errors import InvalidValueError
from ensemble.search.artifacts import baseline_study

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

N_CLASSES = 10
#: Search-space keys read by the orchestrator rather than the model (rows fitted while searching).
RUN_KEYS = ("search_rows",)
_PENALTY_L1_RATIO = {"l2": 0.0, "l1": 1.0}


class ProbaModel(Protocol):
    """A fitted model or a loaded baseline: class probabilities for a batch of inputs."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FitContext:
    """What a builder may need besides params: threads, seed, device and the fit matrix's shape/variance."""

    threads: int
    seed: int
    device: str
    n_features: int
    x_var: float


@dataclass(frozen=True)
class Family:
    """A model family: its search-space keys and a builder for the unfitted estimator."""

    name: str
    keys: tuple[str, ...]
    build: Callable[[dict[str, Any], FitContext], BaseEstimator]
    kind: str = "sklearn"  # or "xgboost"
    package: str | None = None  # an optional package it needs (an extra of the same name), beyond scikit-learn

    @property
    def study_name(self) -> str:
        return baseline_study(self.name)

    @property
    def missing(self) -> str | None:
        """Why the family cannot run here (its optional package is not installed), or None."""
        if self.package is None or is_installed(self.package):
            return None
        return f'not installed: pip install "ensemble[{self.package}]"'


def _logreg(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    from sklearn.linear_model import LogisticRegression

    penalty = p.get("penalty", "l2")
    if penalty not in _PENALTY_L1_RATIO:
        raise InvalidValueError(f"penalty must be one of {sorted(_PENALTY_L1_RATIO)}, got {penalty!r}")
    return LogisticRegression(
        C=float(p.get("C", 1.0)),
        l1_ratio=_PENALTY_L1_RATIO[penalty],
        solver="lbfgs" if penalty == "l2" else "saga",
        max_iter=int(p.get("max_iter", 200)),
        tol=float(p.get("tol", 1e-4)),
        random_state=ctx.seed,
    )


def _forest_kwargs(p: dict[str, Any], ctx: FitContext) -> dict[str, Any]:
    mf = p.get("max_features", "sqrt")
    return {
        "n_estimators": int(p.get("n_estimators", 200)),
        "max_features": None if mf == "all" else mf,
        "min_samples_leaf": int(p.get("min_samples_leaf", 1)),
        "max_depth": p.get("max_depth") or None,
        "criterion": p.get("criterion", "gini"),
        "bootstrap": bool(p.get("bootstrap", True)),
        "n_jobs": ctx.threads,
        "random_state": ctx.seed,
    }


def _rf(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**_forest_kwargs(p, ctx))


def _extratrees(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(**_forest_kwargs({"bootstrap": False, **p}, ctx))


def _knn(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(
        n_neighbors=int(p.get("n_neighbors", 5)),
        weights=p.get("weights", "distance"),
        p=int(p.get("p", 2)),
        n_jobs=ctx.threads,
    )


def _svm(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # gamma is searched as a multiple of scikit-learn's 'scale' = 1 / (n_features * Var(X)).
    gamma = float(p.get("gamma_scale", 1.0)) / (ctx.n_features * max(ctx.x_var, 1e-12))
    svc = SVC(C=float(p.get("C", 10.0)), kernel="rbf", gamma=gamma, cache_size=int(p.get("cache_mb", 500)))
    # SVC(probability=True) is deprecated since scikit-learn 1.9; this is its documented replacement.
    return CalibratedClassifierCV(
        svc, method=p.get("calibration", "sigmoid"), cv=int(p.get("calibration_cv", 3)), ensemble=False
    )


def _xgboost(p: dict[str, Any], ctx: FitContext) -> BaseEstimator:
    import xgboost as xgb

    return xgb.XGBClassifier(
        n_estimators=int(p.get("n_estimators", 200)),
        max_depth=int(p.get("max_depth", 6)),
        learning_rate=float(p.get("learning_rate", 0.2)),
        subsample=float(p.get("subsample", 0.8)),
        colsample_bytree=float(p.get("colsample_bytree", 0.5)),
        min_child_weight=float(p.get("min_child_weight", 1.0)),
        reg_lambda=float(p.get("reg_lambda", 1.0)),
        max_bin=int(p.get("max_bin", 256)),
        tree_method="hist",
        device=ctx.device,
        n_jobs=ctx.threads,
        random_state=ctx.seed,
        objective="multi:softprob",
        eval_metric="mlogloss",
    )


_FOREST_KEYS = ("n_estimators", "max_features", "min_samples_leaf", "max_depth", "criterion", "bootstrap")
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("logreg", ("C", "penalty", "max_iter", "tol"), _logreg),
        Family("rf", _FOREST_KEYS, _rf),
        Family("extratrees", _FOREST_KEYS, _extratrees),
        Family("knn", ("n_neighbors", "weights", "p"), _knn),
        Family("svm", ("C", "gamma_scale", "calibration", "calibration_cv", "cache_mb"), _svm),
        Family(
            "xgboost",
            (
                "n_estimators",
                "max_depth",
                "learning_rate",
                "subsample",
                "colsample_bytree",
                "min_child_weight",
                "reg_lambda",
                "max_bin",
            ),
            _xgboost,
            kind="xgboost",
            package="xgboost",
        ),
    )
}


def space_keys(family: Family) -> tuple[str, ...]:
    """Every key the family's search-space file may use."""
    from ensemble.search.baselines.preprocess import PREPROCESS_KEYS

    return (*family.keys, *PREPROCESS_KEYS, *RUN_KEYS)


@functools.cache
def xgboost_device() -> tuple[str, str]:
    """(device, reason): 'cuda' when an NVIDIA GPU is visible and XGBoost has CUDA, else 'cpu'.

    Cheap: looks for ``nvidia-smi -L`` output; ``ENSEMBLE_XGB_DEVICE=cpu|cuda`` overrides.
    """
    forced = os.environ.get("ENSEMBLE_XGB_DEVICE")
    if forced:
        return forced, f"ENSEMBLE_XGB_DEVICE={forced}"
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "cpu", "no NVIDIA GPU found (no nvidia-smi)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "cpu", "nvidia-smi failed"
    gpus = [line for line in out.splitlines() if line.startswith("GPU ")]
    if not gpus:
        return "cpu", "nvidia-smi lists no GPU"
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA"):
        return "cpu", f"{gpus[0]} present but this XGBoost build has no CUDA"
    return "cuda", gpus[0]


def full_proba(model: ProbaModel, x: np.ndarray) -> np.ndarray:
    """predict_proba as float32 (N, 10), with zero columns for classes absent from the fit data."""
    p = np.asarray(model.predict_proba(x), dtype=np.float32)
    classes = np.asarray(getattr(model, "classes_", np.arange(p.shape[1])), dtype=int)
    if p.shape[1] == N_CLASSES and np.array_equal(classes, np.arange(N_CLASSES)):
        return p
    out = np.zeros((len(p), N_CLASSES), np.float32)
    out[:, classes] = p
    return out


def check_params(family: Family, params: Mapping[str, Any]) -> None:
    """Build (not fit) the estimator once so bad fixed values fail before any work starts."""
    ctx = FitContext(threads=1, seed=0, device="cpu", n_features=784, x_var=0.1)
    est = family.build(dict(params), ctx)
    if hasattr(est, "_parameter_constraints") and hasattr(est, "_validate_params"):
        est._validate_params()
