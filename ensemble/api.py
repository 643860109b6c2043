"""The Python API: :func:`fit` a run, :func:`load` a finished one, and predict with its final model.

``ensemble run`` on the command line goes through :func:`fit` too, so both give the same run. In a
notebook::

    import ensemble

    result = ensemble.fit(data="/kaggle/input/digit-recognizer", preset="quick", time_budget="20m")
    result.leaderboard()            # a pandas DataFrame, best first
    result.predict(images)          # labels of (n, 28, 28) or (n, 784) raw 0-255 images

The status lines go to the ``ensemble`` logger (:mod:`ensemble.logs`); quiet them with
``logging.getLogger("ensemble").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ensemble.errors import ArtifactError, UsageError
from ensemble.io import read_json

if TYPE_CHECKING:
    import pandas as pd

    from ensemble.inference.final_model import FinalModel

#: what ``data`` may be: a path (folder, zip), None (the default search), or (x_train, y_train, x_test)
DataArg = str | os.PathLike[str] | tuple[ArrayLike, ArrayLike, ArrayLike] | None


@dataclass(frozen=True)
class HoldoutScore:
    """The final model's score on the run's own holdout split (never trained on before the refit)."""

    accuracy: float
    correct: int
    n: int
    ci95_low: float
    ci95_high: float


@dataclass(frozen=True)
class Result:
    """A finished run: its final model, holdout figures, leaderboard and submission.

    ``predict`` and ``predict_proba`` use the final model as the submission was made (the refit on
    every label when there is one, with its TTA views); it is loaded on first use.
    """

    run: str
    path: Path
    final_model: str
    holdout: HoldoutScore
    submission: Path
    #: the test set's size; a submission to Kaggle needs 28,000 rows
    n_test: int
    #: the data the run was made from (a folder or zip; :func:`ensemble.read_test_images` reads its test images)
    data: Path

    @property
    def holdout_accuracy(self) -> float:
        return self.holdout.accuracy

    @property
    def competition_shaped(self) -> bool:
        """Whether the submission has the competition's rows, so Kaggle would take it."""
        from ensemble.data.kaggle import competition_shaped

        return competition_shaped(self.n_test)

    def leaderboard(self) -> pd.DataFrame:
        """Every model compared on the holdout, best first (the report's leaderboard.csv), indexed by rank."""
        import pandas as pd

        rows = read_json(self.path / "report" / "summary.json")["leaderboard"]
        return pd.DataFrame(rows).set_index("rank")

    @cached_property
    def model(self) -> FinalModel:
        """The final model, loaded (hash-checked where it comes from an ensemble folder)."""
        from ensemble.data.runs import RunFolder
        from ensemble.inference.final_model import load_final_model

        use_backend(None)  # before Keras loads: $KERAS_BACKEND, else the first installed backend
        return load_final_model(RunFolder(self.run, self.path), self.final_model)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 (n, 10), of (n, 28, 28) or (n, 784) images with raw 0-255 pixels."""
        return self.model.predict_proba(images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted digits (n,) of (n, 28, 28) or (n, 784) images with raw 0-255 pixels."""
        return self.predict_proba(images).argmax(axis=1)


def load(run: str | os.PathLike[str] = "main") -> Result:
    """A finished run by name (``runs/NAME``) or by folder; raises ArtifactError when it has no report yet."""
    from ensemble.data.runs import check_name, runs_dir

    p = Path(run)
    folder = p if (p / "run.json").is_file() or len(p.parts) > 1 else runs_dir() / check_name(str(run))
    summary_path = folder / "report" / "summary.json"
    if not (folder / "run.json").is_file():
        raise UsageError(f"{folder}: no such run (run.json missing)")
    if not summary_path.is_file():
        raise ArtifactError(f"{summary_path}: the run has no report yet (finish it with: ensemble run --run NAME)")
    summary = read_json(summary_path)
    meta = read_json(folder / "run.json")
    final = summary["final_model"]
    row = next((r for r in summary["leaderboard"] if r["model"] == final), None)
    if row is None:
        raise ArtifactError(f"{summary_path}: the final model {final!r} is not in the leaderboard")
    n_holdout = int(meta["split"]["sizes"]["holdout"])
    score = HoldoutScore(
        accuracy=float(row["holdout_accuracy"]),
        correct=int(row["holdout_correct"]),
        n=n_holdout,
        ci95_low=float(row["ci95_low"]),
        ci95_high=float(row["ci95_high"]),
    )
    submission = folder / "submission.csv"
    return Result(str(meta["name"]), folder, final, score, submission, _rows(submission), Path(meta["data"]["path"]))


def _rows(csv: Path) -> int:
    """Data rows of a CSV file (lines after the header)."""
    with open(csv, "rb") as f:
        return max(sum(1 for line in f if line.strip()) - 1, 0)


def fit(
    data: DataArg = None,
    *,
    run: str = "main",
    preset: str = "quick",
    time_budget: str | float | None = None,
    backend: str | None = None,
    storage: str | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    restart: bool = False,
    settings: Mapping[str, object] | None = None,
    progress: bool = True,
) -> Result:
    """Run the whole job (or continue it) and return the finished run; ``ensemble run`` calls this.

    Args:
        data: Kaggle's files (a folder with train.csv/test.csv, .gz ok, or digit-recognizer.zip); or
            ``(x_train, y_train, x_test)`` arrays of raw 0-255 images; None: the default search
            (``$ENSEMBLE_DATA``, a Kaggle notebook's ``/kaggle/input/digit-recognizer``,
            ``./data/digit-recognizer``), else the offline demo digits.
        run: the run's name: its folder is ``runs/NAME`` (``/kaggle/working/runs/NAME`` on Kaggle).
            Calling again with the same name continues where it stopped.
        preset: ``quick`` (a 2-core CPU), ``standard`` or ``best``.
        time_budget: the whole run's budget, e.g. ``"20m"``, ``"1h30m"`` or seconds; None: the
            preset's, in proportion for fewer than 42,000 labeled digits.
        backend: the Keras backend (``tensorflow``, ``jax``, ``torch``); None: ``$KERAS_BACKEND``,
            else the first one installed.
        storage: an Optuna storage URL (PostgreSQL, ``grpc://``) to share the search with other
            machines; None: the run's journal file.
        artifacts: an artifact store for the trials' files (a shared folder or ``s3://BUCKET``).
        restart: delete the run (and its studies) and start over.
        settings: preset settings to change, e.g. ``{"final_members": 0}`` (``ensemble run --help``).
        progress: print the status lines on stdout (a handler on the ``ensemble`` logger).
    """
    from ensemble.durations import parse_duration
    from ensemble.pipeline.run import run_pipeline

    budget = parse_duration(time_budget, option="time_budget") if isinstance(time_budget, str) else time_budget
    use_backend(backend)
    if artifacts is not None:
        from ensemble.search.artifacts import ARTIFACTS_ENV

        os.environ[ARTIFACTS_ENV] = str(artifacts)
    if progress:
        from ensemble.logs import show_progress

        show_progress()
    if "ipykernel" in sys.modules:  # a notebook shows what reaches file descriptor 2: drop TensorFlow's chatter
        from ensemble.quiet import filter_native_logs

        filter_native_logs()
    path = _data_path(data)
    run_pipeline(
        run,
        data=path,
        preset=preset,
        time_budget=budget,
        restart=restart,
        overrides=dict(settings or {}),
        storage_url=storage,
    )
    return load(run)


def use_backend(backend: str | None) -> str:
    """Use ``backend`` for Keras in this process and its children (:func:`ensemble.backends.use_backend`).

    Keras picks its backend once, at import: another one than a Keras already imported runs is refused.
    """
    from ensemble.backends import use_backend as choose_and_set

    loaded = sys.modules.get("keras")
    if backend and loaded is not None and loaded.backend.backend() != backend:
        raise UsageError(f"backend {backend}: this process already runs Keras on {loaded.backend.backend()}")
    return choose_and_set(backend)


def _data_path(data: DataArg) -> str | None:
    if data is None:
        return None
    if isinstance(data, tuple):
        if len(data) != 3:
            raise UsageError(f"data: expected (x_train, y_train, x_test), got a tuple of {len(data)}")
        from ensemble.data.arrays import save_arrays
        from ensemble.data.runs import runs_dir

        return str(save_arrays(runs_dir() / ".arrays", *data))
    return os.fspath(data)
