"""Saving and loading a fitted baseline (the files of a trial folder or of an ensemble's member).

scikit-learn models are saved as one joblib pipeline (preprocessing + model); XGBoost is saved in its
own UBJ format with the preprocessing in a joblib file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ensemble.errors import ArtifactError, one_line
from ensemble.search.artifacts import BASELINE_PREFIX
from ensemble.search.baselines.models import FAMILIES, Family, ProbaModel, full_proba

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

#: joblib compression for saved baselines: a 300-tree extra-trees model on Kaggle's data went from
#: 405 MB to 62 MB, and loads faster (2.9 s instead of 4.7 s: less to read), for 4 s more at save.
JOBLIB_COMPRESS = ("zlib", 3)


def save_model(folder: Path, family: Family, pre: Pipeline, model: BaseEstimator) -> list[str]:
    """Save a fitted model into ``folder`` (joblib files zlib-compressed); returns the file names written."""
    import joblib

    if family.kind == "xgboost":
        model.save_model(folder / "model.ubj")
        joblib.dump(pre, folder / "preprocess.joblib", compress=JOBLIB_COMPRESS)
        return ["model.ubj", "preprocess.joblib"]
    from sklearn.pipeline import Pipeline

    joblib.dump(Pipeline([*pre.steps, ("model", model)]), folder / "model.joblib", compress=JOBLIB_COMPRESS)
    return ["model.joblib"]


class _XGBPipeline:
    """Preprocessing + XGBoost booster behind one ``predict_proba(images)``."""

    def __init__(self, pre: Pipeline, model: BaseEstimator) -> None:
        self.pre, self.model = pre, model

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return full_proba(self.model, self.pre.transform(x))


#: The files each kind of saved baseline is loaded from (see ``save_model``).
MODEL_FILES: dict[str, tuple[str, ...]] = {"sklearn": ("model.joblib",), "xgboost": ("model.ubj", "preprocess.joblib")}
#: Every file a saved baseline may consist of, whatever its kind.
SAVED_FILES = frozenset(name for files in MODEL_FILES.values() for name in files)


def family_kind(study: object) -> str | None:
    """The kind ('sklearn' or 'xgboost') of a ``baseline-FAMILY`` study's models; None when unknown."""
    if isinstance(study, str) and study.startswith(BASELINE_PREFIX):
        family = FAMILIES.get(study.removeprefix(BASELINE_PREFIX))
        return family.kind if family else None
    return None


def model_files(listed: Iterable[str], kind: str | None = None, *, where: str | Path = "") -> tuple[str, ...]:
    """Which of the ``listed`` file names a saved baseline is loaded from.

    ``kind`` (from the member's study) decides when known; otherwise the listed names must fit
    exactly one kind. Other listed files (config.json, probabilities) are never loaded.
    """
    names = set(listed)
    kinds = [kind] if kind else [k for k, files in MODEL_FILES.items() if set(files) <= names]
    if len(kinds) > 1:
        raise ArtifactError(f"{where}: both model.joblib and model.ubj listed; cannot tell which model to load")
    if not kinds or kinds[0] not in MODEL_FILES or not set(MODEL_FILES[kinds[0]]) <= names:
        need = " or ".join(" + ".join(f) for f in MODEL_FILES.values())
        raise ArtifactError(f"{where}: no {need} listed with a sha256 for this baseline")
    return MODEL_FILES[kinds[0]]


def _unpickle(data: bytes, where: Path) -> object:
    import joblib

    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # pickle, zlib and attribute errors of every kind
        raise ArtifactError(f"{where}: cannot load it ({one_line(exc, 200, typed=True)})") from exc


def load_saved(blobs: Mapping[str, bytes], folder: str | Path = "") -> ProbaModel:
    """A saved baseline from its files' bytes (names as in ``MODEL_FILES``; check them before calling).

    Returns an object whose ``predict_proba(images uint8 (N,28,28))`` gives (N, 10).
    """
    folder = Path(folder)
    if set(blobs) == set(MODEL_FILES["sklearn"]):
        return cast("ProbaModel", _unpickle(blobs["model.joblib"], folder / "model.joblib"))
    if set(blobs) != set(MODEL_FILES["xgboost"]):
        raise ArtifactError(f"{folder}: expected model.joblib or model.ubj + preprocess.joblib, got {sorted(blobs)}")
    try:
        import xgboost as xgb
    except ImportError as exc:  # trained where XGBoost was installed, loaded where it is not
        why = 'xgboost is not installed: pip install "ensemble[xgboost]"'
        raise ArtifactError(f"{folder}: an XGBoost model, and {why}") from exc

    model = xgb.XGBClassifier()
    try:
        model.load_model(bytearray(blobs["model.ubj"]))
    except Exception as exc:  # xgboost.core.XGBoostError, ValueError, TypeError
        raise ArtifactError(f"{folder / 'model.ubj'}: cannot load it ({one_line(exc, 200, typed=True)})") from exc
    pre = cast("Pipeline", _unpickle(blobs["preprocess.joblib"], folder / "preprocess.joblib"))
    return _XGBPipeline(pre, model)


def load_model(folder: str | Path, kind: str | None = None) -> ProbaModel:
    """Load a baseline saved in a trial folder (no manifest there): ``kind``'s files, else the one kind present."""
    folder = Path(folder)
    present = [f.name for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
    names = model_files(present, kind, where=folder)
    return load_saved({n: (folder / n).read_bytes() for n in names}, folder)
