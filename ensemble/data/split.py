"""Deterministic stratified train / validation / holdout split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.errors import DataError, InvalidValueError
from ensemble.io import read_json, write_json


@dataclass(frozen=True)
class Split:
    """Row indices into the training data; validation selects models, holdout only reports."""

    train: np.ndarray
    val: np.ndarray
    holdout: np.ndarray
    seed: int
    val_frac: float
    holdout_frac: float
    fingerprint: str

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "val_frac": self.val_frac,
            "holdout_frac": self.holdout_frac,
            "fingerprint": self.fingerprint,
            "sizes": {"train": len(self.train), "val": len(self.val), "holdout": len(self.holdout)},
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "holdout": self.holdout.tolist(),
        }


def check_fractions(val_frac: float, holdout_frac: float) -> None:
    """InvalidValueError unless both fractions are above 0 and their sum is below 1.

    The search and the model selection need a validation part, the report a holdout part.
    """
    if not (0 < val_frac < 1 and 0 < holdout_frac < 1 and val_frac + holdout_frac < 1):
        raise InvalidValueError(
            f"split fractions val_frac={val_frac}, holdout_frac={holdout_frac}: each must be above 0 and "
            f"their sum below 1 (validation selects the models, the holdout is for the report)"
        )


def stratified_split(
    labels: np.ndarray, *, seed: int = 0, val_frac: float = 0.1, holdout_frac: float = 0.1, fingerprint: str = ""
) -> Split:
    """Split indices per class so each part keeps the label proportions; no part may be empty."""
    check_fractions(val_frac, holdout_frac)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "holdout": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_hold = int(round(len(idx) * holdout_frac))
        n_val = int(round(len(idx) * val_frac))
        parts["holdout"].append(idx[:n_hold])
        parts["val"].append(idx[n_hold : n_hold + n_val])
        parts["train"].append(idx[n_hold + n_val :])
    out = {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}
    empty = [k for k, v in out.items() if v.size == 0]
    if empty:
        raise DataError(
            f"{len(labels):,} labeled rows are too few to split with val_frac={val_frac}, "
            f"holdout_frac={holdout_frac}: the {empty[0]} part would be empty"
        )
    return Split(out["train"], out["val"], out["holdout"], seed, val_frac, holdout_frac, fingerprint)


def save_split(split: Split, path: str | Path) -> Path:
    """Write the split as JSON."""
    return write_json(path, split.to_json())


def load_split(path: str | Path) -> Split:
    """Read a split written by :func:`save_split`."""
    d = read_json(path)
    return Split(
        np.asarray(d["train"], np.int64),
        np.asarray(d["val"], np.int64),
        np.asarray(d["holdout"], np.int64),
        int(d["seed"]),
        float(d["val_frac"]),
        float(d["holdout_frac"]),
        str(d["fingerprint"]),
    )
