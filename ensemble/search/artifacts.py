"""The run's studies and where their trials' artifacts live: the one place that spells either.

Studies: ``cnn`` (the CNN search), ``baseline-FAMILY`` (one per classical family) and
``baseline-fallback`` (the quick model of a run cut short). Layout: ``runs/NAME/models/STUDY/trial-NNNN/``
holding the fitted model, ``config.json`` and ``proba_val.npy`` / ``proba_holdout.npy`` /
``proba_test.npy`` (float32, shape (N, 10)).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.errors import ArtifactError

if TYPE_CHECKING:
    from ensemble.data.runs import Run

PARTS = ("val", "holdout", "test")
CNN_STUDY = "cnn"
BASELINE_PREFIX = "baseline-"
FALLBACK_STUDY = "baseline-fallback"


def baseline_study(family: str) -> str:
    """The study of one baseline family."""
    return f"{BASELINE_PREFIX}{family}"


def is_run_study(name: str) -> bool:
    """Whether a study of that name belongs to a run (the CNN study or a baseline study)."""
    return name == CNN_STUDY or name.startswith(BASELINE_PREFIX)


def trial_folder_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_path(run: Run, study: str, number: int) -> Path:
    """Where one trial's artifacts live (not created)."""
    return run.path("models", study, trial_folder_name(number))


def partial_trial_path(run: Run, study: str, number: int) -> Path:
    """Where a trial's artifacts are written before they are renamed into place."""
    return run.path("models", study, f".{trial_folder_name(number)}.partial")


def trial_dir(run: Run, study: str, number: int) -> Path:
    """Folder for one trial's artifacts (created)."""
    d = trial_path(run, study, number)
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_probas(folder: Path, probas: dict[str, np.ndarray]) -> None:
    """Save class probabilities per part as float32 ``proba_PART.npy``."""
    for part, p in probas.items():
        np.save(folder / f"proba_{part}.npy", np.asarray(p, np.float32))


def load_proba(folder: str | Path, part: str) -> np.ndarray:
    """Load one part's probabilities, with a clear error if absent."""
    f = Path(folder) / f"proba_{part}.npy"
    if not f.exists():
        raise ArtifactError(f"{f}: missing probabilities file")
    return np.load(f)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (folders: of every file inside, by relative name)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
