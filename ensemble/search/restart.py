"""``--restart``: delete a run's folder and, in a shared storage, the run's studies and their stored files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from ensemble import logs
from ensemble.errors import UsageError
from ensemble.search.artifacts import is_run_study
from ensemble.search.storage import connect, driver_error, redact

if TYPE_CHECKING:
    import optuna


def delete_run(name: str, *, storage_url: str | None = None, say: Callable[[str], None] = logs.info) -> None:
    """``--restart``: delete ``runs/NAME`` (a real run folder only) and, with a remote storage, the run's studies.

    The caller holds the run's writer lock. Refuses (UsageError) when the folder is not a run folder,
    is a symbolic link, or a live process on this host is still adding trials to it.
    """
    from ensemble.data.runs import run_root, runs_dir
    from ensemble.locks import live_tokens, own_token

    root = run_root(name)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise UsageError(f"{root} is not a run folder (a link or a file); remove it yourself if you mean to")
    if root.is_dir():
        if root.resolve().parent != runs_dir().resolve() or not (root / "run.json").is_file():
            raise UsageError(f"{root} is not a run folder (no run.json); remove it yourself if you mean to")
        mine = own_token(root)
        busy = [t for t in live_tokens(root) if t != mine]
        if busy:
            pids = ", ".join(t.rsplit("-", 2)[-2] for t in busy)
            raise UsageError(f"run {name} has live worker process(es) (pid {pids}); stop them before --restart")
    if storage_url:
        _delete_remote_studies(name, storage_url, say)
    if root.is_dir():
        say(f"--restart: deleting {root} and starting over")
        shutil.rmtree(root)


def run_study_names(all_names: list[str]) -> list[str]:
    """The studies a run keeps in its storage: ``cnn`` and ``baseline-*``."""
    return sorted(n for n in all_names if is_run_study(n))


def _delete_remote_studies(run_name: str, storage_url: str, say: Callable[[str], None]) -> None:
    """Delete run ``run_name``'s studies (``RUN.cnn``, ``RUN.baseline-*``) from a shared storage; others stay."""
    import optuna

    from ensemble.search.artifacts import open_artifact_store
    from ensemble.search.scoped import RunScopedStorage, stored_name

    storage = RunScopedStorage(connect(storage_url), run_name)
    try:
        names = run_study_names(optuna.get_all_study_names(storage=storage))
    except Exception as exc:  # a driver's or server's error
        why = driver_error(exc, storage_url)
        raise UsageError(f"cannot read Optuna storage '{redact(storage_url)}': {why}") from exc
    store = open_artifact_store()
    for study in names:
        if store is not None:
            _delete_stored_files(optuna.load_study(study_name=study, storage=storage), store, say)
        say(f"--restart: deleting study '{stored_name(run_name, study)}' from {redact(storage_url)}")
        optuna.delete_study(study_name=study, storage=storage)


def _delete_stored_files(study: optuna.Study, store: object, say: Callable[[str], None]) -> None:
    """Remove the study's trials' files from the artifact store (``--restart``)."""
    from optuna.artifacts import get_all_artifact_meta
    from optuna.artifacts.exceptions import ArtifactNotFound

    ids = [
        m.artifact_id
        for t in study.get_trials(deepcopy=False)
        for m in get_all_artifact_meta(t, storage=study._storage)
    ]
    for artifact_id in ids:
        try:
            store.remove(artifact_id)  # type: ignore[attr-defined]
        except ArtifactNotFound:
            pass
    if ids:
        say(f"--restart: deleted {len(ids)} file(s) of study '{study.study_name}' from the artifact store")
