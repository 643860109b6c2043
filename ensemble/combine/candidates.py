"""The trials that may join an ensemble: the top-k CNN trials and the best trial of each baseline study, checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.errors import ArtifactError, DataError, NoModelError, UsageError
from ensemble.search.artifacts import (
    BASELINE_PREFIX,
    CNN_STUDY,
    ModelId,
    load_proba,
    local_trial,
    trial_path,
)

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run


@dataclass
class Candidate:
    """A completed trial that may join the ensemble."""

    name: str
    kind: str  # "cnn" or "baseline"
    study: str
    number: int
    folder: Path
    val_accuracy: float
    val_logloss: float
    attrs: dict[str, Any]
    trial: optuna.trial.FrozenTrial | None = None  # its FrozenTrial (to download its files from the artifact store)


def study_candidates(run: Run, storage: optuna.storages.BaseStorage, study_name: str, kind: str) -> list[Candidate]:
    """The study's completed trials, best first; their folders are where this machine keeps them."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if not {"val_accuracy", "val_logloss", "artifact_dir"} <= set(a):
            continue
        label = CNN_STUDY if kind == "cnn" else study_name
        name = ModelId(label, t.number).name
        folder = trial_path(run, study_name, t.number)
        if not folder.is_dir() and Path(a["artifact_dir"]).is_dir():
            folder = Path(a["artifact_dir"])  # written elsewhere on this machine
        out.append(Candidate(name, kind, study_name, t.number, folder, a["val_accuracy"], a["val_logloss"], a, t))
    return sorted(out, key=lambda c: (-c.val_accuracy, c.val_logloss, c.number))


def fetch(run: Run, storage: optuna.storages.BaseStorage, c: Candidate) -> Candidate:
    """``c`` with its files on this machine: downloaded from the artifact store when they are not here."""
    if not c.folder.is_dir() and c.trial is not None:
        c.folder = local_trial(run, c.study, c.trial, storage)
    return c


def elsewhere(c: Candidate) -> str:
    """Where a trial whose files are not on this machine was trained (its ``host`` and ``run_root`` attrs)."""
    from ensemble.locks import host

    where = c.attrs.get("host")
    if where and where != host():
        return f"trained on host {where}"
    return f"trained in {c.attrs.get('run_root') or c.attrs.get('artifact_dir')}, not in this run folder"


def with_files_here(
    run: Run,
    storage: optuna.storages.BaseStorage,
    cands: list[Candidate],
    say: Callable[[str], None],
    *,
    study: str,
    need: bool = True,
) -> list[Candidate]:
    """The candidates whose files are on this machine (fetched from the artifact store first, if one is set).

    Says one line for each that has none. With ``need``, none of them having files (and some to look
    for) is an ArtifactError naming ``--artifacts``. ``ensemble build`` and ``ensemble report`` share
    this rule: the top CNN trials are needed, a baseline study's best trial is not.
    """
    here, away = [], []
    for c in cands:
        c = fetch(run, storage, c)
        if c.folder.is_dir() and any(c.folder.iterdir()):
            here.append(c)
            continue
        away.append(c)
        say(f"{c.name} ({elsewhere(c)}) has no files here: skipped; use --artifacts STORE to fetch them")
    if need and away and not here:
        raise ArtifactError(
            f"run '{run.name}': no top trial of study '{study}' has files on this machine ({away[0].name} "
            f"{elsewhere(away[0])}): use --artifacts STORE, the artifact store their files were uploaded to"
        )
    return here


def find_candidates(
    run: Run,
    storage: optuna.storages.BaseStorage,
    top_k: int,
    include_baselines: bool,
    say: Callable[[str], None] = print,
) -> tuple[list, list]:
    """Top-k CNN trials by validation accuracy (log loss breaks ties), and the best trial per baseline study.

    Trials whose files are not on this machine are left out, one line each (:func:`with_files_here`).
    """
    import optuna

    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    names = optuna.get_all_study_names(storage=storage)
    if CNN_STUDY not in names:
        raise NoModelError(f"run '{run.name}' has no '{CNN_STUDY}' study; run the CNN search first")
    top = study_candidates(run, storage, CNN_STUDY, "cnn")[:top_k]
    if not top:
        raise NoModelError(f"run '{run.name}': the '{CNN_STUDY}' study has no completed trial with saved artifacts")
    cnns = with_files_here(run, storage, top, say, study=CNN_STUDY)
    baselines = []
    if include_baselines:
        for s in sorted(n for n in names if n.startswith(BASELINE_PREFIX)):
            best = study_candidates(run, storage, s, "baseline")[:1]
            baselines += with_files_here(run, storage, best, say, study=s, need=False)
    for c in cnns + baselines:
        check_trial(run, c)
    return cnns, baselines


def check_trial(run: Run, c: Candidate) -> None:
    """A trial's files exist and were made from this run's data and split."""
    fp = c.attrs.get("data_fingerprint")
    if fp and fp != run.meta["data"]["fingerprint"]:
        raise DataError(
            f"{c.folder}: trial {c.name} was trained on data {str(fp)[:16]}, "
            f"but run '{run.name}' has data fingerprint {str(run.meta['data']['fingerprint'])[:16]}"
        )
    if c.kind == "cnn" and not (c.folder / "model.keras").is_file():
        raise ArtifactError(f"{c.folder / 'model.keras'}: missing model of trial {c.name}")
    for part, n in (("val", len(run.split.val)), ("holdout", len(run.split.holdout)), ("test", len(run.x_test))):
        p = load_proba(c.folder, part)
        if p.shape != (n, 10):
            raise DataError(
                f"{c.folder / f'proba_{part}.npy'}: shape {p.shape}, but run '{run.name}' has {n} {part} rows: "
                "the trial was made from other data or another split"
            )
