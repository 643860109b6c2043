"""The arrays a CNN search trains and predicts on, and this process's file of them for its trainer processes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def search_arrays(run: Run, *, max_train: int | None, seed: int) -> dict[str, np.ndarray]:
    x_train, y_train = run.part("train")
    if max_train and max_train < len(y_train):
        keep = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:max_train])
        x_train, y_train = x_train[keep], y_train[keep]
    x_val, y_val = run.part("val")
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_holdout": run.part("holdout")[0],
        "x_test": run.x_test,
    }


def arrays_file(run: Run, token: str) -> Path:
    """This process's copy of the search arrays for its trial workers (one per process: never shared)."""
    return run.path(".cache", f"search-arrays-{token}.npz")


def write_arrays(run: Run, *, max_train: int | None, seed: int) -> Path:
    """Write this process's copy atomically (its trainers load it once each); returns its path."""
    from ensemble.locks import worker_token

    path = arrays_file(run, worker_token(run.root))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **search_arrays(run, max_train=max_train, seed=seed))
    tmp.replace(path)
    return path
