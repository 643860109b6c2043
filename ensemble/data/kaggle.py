"""Kaggle notebooks: where the competition's data is mounted and where outputs go.

A Kaggle notebook mounts competition data under ``/kaggle/input`` and keeps what is written under
``/kaggle/working``. When that layout is found (or ``$ENSEMBLE_KAGGLE=1``), the default data search
looks in ``/kaggle/input/digit-recognizer`` too, and runs go to ``/kaggle/working/runs``.
``$ENSEMBLE_KAGGLE_ROOT`` moves the root (tests use a temporary folder); ``$ENSEMBLE_KAGGLE=0`` turns
the detection off.
"""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_ENV = "ENSEMBLE_KAGGLE"
KAGGLE_ROOT_ENV = "ENSEMBLE_KAGGLE_ROOT"
DEFAULT_ROOT = Path("/kaggle")
COMPETITION = "digit-recognizer"
#: Kaggle's Digit Recognizer: 42,000 labeled digits and 28,000 test digits to submit.
COMPETITION_TRAIN_ROWS = 42_000
COMPETITION_TEST_ROWS = 28_000


def kaggle_root() -> Path | None:
    """The Kaggle root folder when running in a Kaggle notebook (or told so), else None."""
    flag = os.environ.get(KAGGLE_ENV, "").strip()
    if flag == "0":
        return None
    root = Path(os.environ.get(KAGGLE_ROOT_ENV) or DEFAULT_ROOT)
    if flag == "1" or (root / "input").is_dir():
        return root
    return None


def kaggle_data_candidates() -> list[Path]:
    """Where a Kaggle notebook mounts the competition's files (none outside Kaggle)."""
    root = kaggle_root()
    if root is None:
        return []
    return [root / "input" / COMPETITION, root / "input" / "competitions" / COMPETITION]


def kaggle_runs_dir() -> Path | None:
    """``/kaggle/working/runs`` in a Kaggle notebook (kept with the notebook's output), else None."""
    root = kaggle_root()
    return None if root is None else root / "working" / "runs"


def competition_shaped(n_test: int) -> bool:
    """Whether a test set has the competition's size, so its submission can go to Kaggle."""
    return n_test == COMPETITION_TEST_ROWS
