"""Data given as numpy arrays (the Python API): written once as a Kaggle-shaped dataset folder.

A run pins its data by path and fingerprint, so arrays become ``train.csv.gz`` / ``test.csv.gz`` in a
folder named by their fingerprint (``runs/.arrays/FINGERPRINT``): the same arrays give the same
folder, which every later ``fit`` or ``ensemble run`` of that run reads again.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from ensemble.data.load import fingerprint
from ensemble.errors import DataError
from ensemble.io import atomic_write

SIDE = 28


def as_images(x: object, what: str = "images", *, whole: bool = False) -> np.ndarray:
    """(N, 28, 28) uint8 from (N, 28, 28), (N, 28, 28, 1) or (N, 784) raw 0-255 pixels, else a DataError.

    ``whole``: refuse fractional pixel values (else they are truncated, as ``astype`` does).
    """
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == SIDE * SIDE:
        a = a.reshape(-1, SIDE, SIDE)
    elif a.ndim == 4 and a.shape[1:] == (SIDE, SIDE, 1):
        a = a[..., 0]
    if a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise DataError(f"{what}: expected shape (N, 28, 28) or (N, 784) with N > 0, got {a.shape}")
    if a.dtype != np.uint8:
        if not np.all(np.isfinite(a)) or np.any((a < 0) | (a > 255)):
            raise DataError(f"{what}: pixel values must be raw 0-255")
        if a.dtype.kind == "f" and 0 < a.max() <= 1:
            raise DataError(f"{what}: pixels look scaled to 0-1; pass the raw 0-255 values")
        if whole and np.any(a != np.round(a)):
            raise DataError(f"{what}: pixel values must be whole numbers 0-255")
        a = a.astype(np.uint8)
    return a


def images_784(x: object, what: str) -> np.ndarray:
    """(N, 784) uint8 from (N, 28, 28), (N, 28, 28, 1) or (N, 784) whole raw 0-255 pixels, else a DataError."""
    return as_images(x, what, whole=True).reshape(-1, SIDE * SIDE)


def labels_of(y: object, n: int) -> np.ndarray:
    """Labels 0-9 as uint8, one per training image, else a DataError."""
    a = np.asarray(y).reshape(-1)
    if len(a) != n:
        raise DataError(f"y_train: {len(a)} labels for {n} training images")
    if a.dtype.kind not in "iuf" or np.any(a != np.round(a)) or np.any((a < 0) | (a > 9)):
        raise DataError("y_train: labels must be whole numbers 0-9")
    return a.astype(np.uint8)


def _csv_gz(columns: str, rows: np.ndarray) -> bytes:
    text = io.StringIO()
    np.savetxt(text, rows, fmt="%d", delimiter=",", header=columns, comments="")
    return gzip.compress(text.getvalue().encode(), compresslevel=3, mtime=0)


def save_arrays(folder: str | Path, x_train: object, y_train: object, x_test: object) -> Path:
    """Write the arrays as a Kaggle-shaped dataset under ``folder``; returns the dataset folder."""
    xt = images_784(x_train, "x_train")
    y = labels_of(y_train, len(xt))
    xs = images_784(x_test, "x_test")
    out = Path(folder) / fingerprint(xt.reshape(-1, SIDE, SIDE), y, xs.reshape(-1, SIDE, SIDE))[:16]
    if (out / "train.csv.gz").is_file() and (out / "test.csv.gz").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    pixels = ",".join(f"pixel{i}" for i in range(SIDE * SIDE))
    atomic_write(out / "test.csv.gz", _csv_gz(pixels, xs))
    atomic_write(out / "train.csv.gz", _csv_gz(f"label,{pixels}", np.column_stack([y, xt])))
    return out
