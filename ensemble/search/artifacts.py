"""The run's studies and where their trials' artifacts live: the one place that spells either.

Studies: ``cnn`` (the CNN search), ``baseline-FAMILY`` (one per classical family) and
``baseline-fallback`` (the quick model of a run cut short). Layout: ``runs/NAME/models/STUDY/trial-NNNN/``
holding the fitted model, ``config.json`` and ``proba_val.npy`` / ``proba_holdout.npy`` /
``proba_test.npy`` (float32, shape (N, 10)).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.errors import ArtifactError

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    from ensemble.data.runs import Run

PARTS = ("val", "holdout", "test")
CNN_STUDY = "cnn"
#: What every study's value is: optuna-dashboard shows it in place of "Objective value".
METRIC_NAME = "val_accuracy"
BASELINE_PREFIX = "baseline-"
FALLBACK_STUDY = "baseline-fallback"


def baseline_study(family: str) -> str:
    """The study of one baseline family."""
    return f"{BASELINE_PREFIX}{family}"


def is_run_study(name: str) -> bool:
    """Whether a study of that name belongs to a run (the CNN study or a baseline study)."""
    return name == CNN_STUDY or name.startswith(BASELINE_PREFIX)


def name_metric(study: optuna.Study) -> None:
    """Name the study's value ``val_accuracy`` for optuna-dashboard (Optuna's ``set_metric_names``).

    Written only when the study does not have that name yet, so processes that join an existing
    study (``ensemble worker``, a resumed run) add no write; it is a study system attribute, which
    every storage keeps (journal file, database, gRPC proxy)."""
    import warnings

    import optuna

    if study.metric_names == [METRIC_NAME]:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental since Optuna 3.2
        study.set_metric_names([METRIC_NAME])


def trial_folder_name(number: int) -> str:
    return f"trial-{number:04d}"


_MODEL_ID = re.compile(r"^(?P<study>cnn|baseline-[a-z0-9_]+)-trial-(?P<number>\d{4,})$")


@dataclass(frozen=True)
class ModelId:
    """One trial's model: its study and trial number. Its name is ``STUDY-trial-NNNN`` (``cnn-trial-0003``)."""

    study: str
    trial: int

    @property
    def name(self) -> str:
        return f"{self.study}-{trial_folder_name(self.trial)}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> ModelId | None:
        """The id a trial model's name spells, or None for any other name (an ensemble row)."""
        m = _MODEL_ID.match(name)
        return None if m is None else cls(m["study"], int(m["number"]))


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


# ---------------------------------------------------------------- the artifact store (many machines)
ARTIFACTS_ENV = "ENSEMBLE_ARTIFACTS"


def open_artifact_store(location: str | None = None) -> FileSystemArtifactStore | Boto3ArtifactStore | None:
    """Optuna's artifact store at ``location`` (default ``$ENSEMBLE_ARTIFACTS``), or None for none.

    A folder (a shared mount) gives ``FileSystemArtifactStore``; ``s3://bucket/prefix`` gives
    ``Boto3ArtifactStore`` (needs boto3 and the usual AWS settings). Without one, a trial's files
    live only in the run folder of the machine that trained it, as always.
    """
    where = location or os.environ.get(ARTIFACTS_ENV) or None
    if where is None:
        return None
    import optuna.artifacts as oa

    if where.startswith("s3://"):
        import boto3

        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        if prefix.strip("/"):
            raise ArtifactError(f"{where}: give the bucket only (s3://{bucket}); a prefix is not supported")
        return oa.Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    Path(where).mkdir(parents=True, exist_ok=True)
    return oa.FileSystemArtifactStore(where)


def upload_trial(
    trial: optuna.Trial | optuna.trial.FrozenTrial,
    folder: Path,
    store: FileSystemArtifactStore | Boto3ArtifactStore | None = None,
    storage: optuna.storages.BaseStorage | None = None,
) -> int:
    """Upload every file of a trial's folder to the artifact store (``store`` or ``$ENSEMBLE_ARTIFACTS``).

    ``storage``: needed for a FrozenTrial (a live ``optuna.Trial`` knows its own).
    """
    store = store if store is not None else open_artifact_store()
    if store is None:
        return 0
    from optuna.artifacts import upload_artifact

    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, storage=storage)
    return len(files)


def local_trial(
    run: Run,
    study: str,
    trial: optuna.trial.FrozenTrial,
    storage: optuna.storages.BaseStorage,
    store: FileSystemArtifactStore | Boto3ArtifactStore | None = None,
) -> Path:
    """The trial's folder on this machine, downloaded from the artifact store first if it is not here."""
    folder = trial_path(run, study, trial.number)
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    store = store if store is not None else open_artifact_store()
    if store is None:
        return folder  # not here and no store: the caller reports what is missing
    from optuna.artifacts import download_artifact, get_all_artifact_meta

    metas = get_all_artifact_meta(trial, storage=storage)
    if not metas:
        return folder
    tmp = partial_trial_path(run, study, trial.number)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for meta in metas:
        download_artifact(
            artifact_store=store, file_path=str(tmp / Path(meta.filename).name), artifact_id=meta.artifact_id
        )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
