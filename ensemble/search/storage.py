"""Optuna storage for a run: a journal file by default, safe for several processes.

Optuna's FAQ recommends ``JournalStorage`` with ``JournalFileBackend`` for parallel
workers on one machine: SQLite raises "database is locked" under concurrent writers.
``optuna-dashboard`` and the ``optuna`` CLI both open the journal file directly.
Any Optuna storage URL (``postgresql://...``, ``mysql://...``) may be passed instead.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import UsageError
from ensemble.search.artifacts import is_run_study

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run

JOURNAL_NAME = "optuna.journal"
SPLIT_KEYS = ("seed", "val_frac", "holdout_frac")  # with the data's fingerprint, what fixes a run's split
RDB_SCHEMES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")  # SQLAlchemy URLs: RDBStorage, with a heartbeat
HEARTBEAT_ENV = "ENSEMBLE_HEARTBEAT_S"
MAX_RETRY = 2  # a trial whose worker died is queued again at most this many times
#: Read in place of ``--storage`` when that is not given: keeps a database password out of argv and shell history.
STORAGE_ENV = "ENSEMBLE_STORAGE"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for output, logs and errors)."""
    return re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", url)


def _one_line(exc: BaseException) -> str:
    """A driver's error as one line, password hidden (SQLAlchemy appends a "Background on this error" line)."""
    text = str(exc).split("\n(Background on this error")[0]
    return redact(" ".join(text.split()))


def storage_location(run: Run, url: str | None = None) -> str:
    """The storage URL or journal path a run's studies live in."""
    return url if url else str(run.path(JOURNAL_NAME))


def _is_url(location: str) -> bool:
    return "://" in location


def open_storage(run: Run, url: str | None = None, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """Open the run's storage: its journal file, or the Optuna storage at ``url`` seen through the run's
    names (:class:`~ensemble.search.scoped.RunScopedStorage`: many runs can share one database).

    ``heartbeat`` (a database URL only): Optuna's heartbeat every ``$ENSEMBLE_HEARTBEAT_S`` seconds (60);
    a trial whose process stopped beating for twice that is failed by whichever worker is alive and
    queued again (``RetryHeartbeatStaleTrialCallback``; its failed try does not count as finished).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from ensemble.search.scoped import scoped

    loc = storage_location(run, url)
    try:
        if _is_url(loc):
            if heartbeat and loc.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES:
                return scoped(_rdb_with_heartbeat(loc), run.name)
            return scoped(optuna.storages.get_storage(loc), run.name)
        Path(loc).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(loc))
    except Exception as exc:  # optuna raises many kinds for a bad URL
        raise UsageError(f"cannot open Optuna storage '{redact(loc)}': {_one_line(exc)}") from exc


def check_run_identity(study: optuna.Study, run: Run) -> None:
    """Record which data and split the run's study belongs to; refuse a process whose run has other ones.

    In a shared storage a study is found by the run's name alone: a second machine that names the same
    run with other data (or another split) would mix trials that cannot be compared or ensembled.
    """
    meta_split = dict(run.meta.get("split", {}))  # type: ignore[call-overload]
    mine = {"data_fingerprint": run.dataset.fingerprint, "split": {k: meta_split.get(k) for k in SPLIT_KEYS}}
    recorded = study.user_attrs.get("run_identity")
    if recorded is None:
        study.set_user_attr("run_identity", mine)
    elif recorded != mine:
        raise UsageError(
            f"study '{study.study_name}' of run '{run.name}' in the storage belongs to data "
            f"{str(recorded.get('data_fingerprint'))[:16]} split {recorded.get('split')}, but this run has data "
            f"{mine['data_fingerprint'][:16]} split {mine['split']}: use the same --data, or another --run name"
        )


OWNER_ATTRS = ("worker", "pid", "host", "run_root", "fail_reason", "killed")


def _retry_class() -> type:
    import optuna

    class RetryWithoutOwner(optuna.storages.RetryHeartbeatStaleTrialCallback):
        """Queue the stale trial again without its dead worker's tags (else that worker's dead token could
        get the new try failed before its new worker tags it)."""

        def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            trial = copy.copy(trial)
            trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OWNER_ATTRS}
            super().__call__(study, trial)

    return RetryWithoutOwner


def _rdb_with_heartbeat(url: str) -> optuna.storages.BaseStorage:
    import warnings

    import optuna

    interval = max(1, int(float(os.environ.get(HEARTBEAT_ENV) or 60)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = _retry_class()(max_retry=MAX_RETRY)  # a class made on first use: optuna is imported lazily
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=interval, grace_period=2 * interval, heartbeat_stale_trial_callback=retry
        )


def worker_command(run: Run, url: str | None) -> str | None:
    """The command that adds a machine to this run's CNN search (a database storage only), password hidden."""
    from ensemble.search.artifacts import ARTIFACTS_ENV

    if not url or not _is_url(url):
        return None
    store = os.environ.get(ARTIFACTS_ENV)
    extra = f" --artifacts {shlex.quote(store)}" if store else ""
    return f"ENSEMBLE_STORAGE={shlex.quote(redact(url))} ensemble worker --run {run.name} --data DATA{extra}"


def dashboard_command(run: Run, url: str | None = None) -> str:
    """The shell command that opens this run in optuna-dashboard (a URL's password shown as ``***``)."""
    return f"optuna-dashboard {shlex.quote(redact(storage_location(run, url)))}"


def stored_study(run: Run, study: str, url: str | None = None) -> str:
    """A run's study as the storage names it (``RUN.study`` in a shared storage): for the ``optuna`` CLI."""
    from ensemble.search.scoped import stored_name

    return stored_name(run.name, study) if _is_url(storage_location(run, url)) else study


def optuna_cli_args(run: Run, url: str | None = None) -> str:
    """``--storage`` arguments for the ``optuna`` CLI (trials, best-trial, ...); a password shown as ``***``."""
    loc = storage_location(run, url)
    if _is_url(loc):
        return f"--storage {shlex.quote(redact(loc))}"
    return f"--storage {shlex.quote(loc)} --storage-class JournalFileBackend"


def mark_owner(trial: optuna.Trial, run_root: Path) -> None:
    """Tag ``trial`` with this process (pid, host and its live worker token; see :mod:`ensemble.locks`)."""
    from ensemble.locks import host, worker_token

    token = worker_token(run_root)
    trial.set_user_attr("run_root", str(run_root.resolve()))  # where its token lives (a shared storage has many)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", host())
    trial.set_user_attr("worker", token)  # last: a trial with a token has the rest of its tags


KILLED_REASON = "left RUNNING by a process that stopped"


def was_killed(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial failed because its process died (it does not count as a finished trial)."""
    return bool(trial.user_attrs.get("killed"))


def _owner_alive(t: optuna.trial.FrozenTrial, run_root: Path, others_live: bool) -> bool:
    from ensemble.locks import host, token_alive

    token, pid, where = t.user_attrs.get("worker"), t.user_attrs.get("pid"), t.user_attrs.get("host")
    if token is not None:
        if where is not None and where != host():
            return True  # another machine's trial: not ours to judge
        # its token lives in its own run folder (in a shared storage, other folders on this host add trials too)
        return token_alive(Path(t.user_attrs.get("run_root") or run_root), str(token))
    if pid is not None:  # tagged by an older version: pid only
        return where != host() or _alive(int(pid))
    # Not tagged yet: its process may be between Optuna's ask and our tag. Every trial-adding
    # process holds a live token before it asks, so with no other live worker it is dead.
    return others_live


def fail_stale_trials(study: optuna.Study, run_root: Path, *, local_storage: bool = True) -> list[int]:
    """Mark RUNNING trials whose process is gone (killed) as FAIL, tagged ``killed``, so they don't block or count.

    A trial of another host is left alone, and so is an untagged trial in a remote storage
    (another machine may be about to tag it).
    """
    import optuna

    from ensemble.locks import live_tokens, worker_token

    mine = worker_token(run_root)
    others_live = any(tok != mine for tok in live_tokens(run_root)) or not local_storage
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _owner_alive(t, run_root, others_live) or t.user_attrs.get("worker") == mine:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", KILLED_REASON)
        study._storage.set_trial_user_attr(t._trial_id, "killed", True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        stale.append(t.number)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_run(name: str, *, storage_url: str | None = None, say: Callable[[str], None] = print) -> None:
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

    try:
        storage = RunScopedStorage(optuna.storages.get_storage(storage_url), run_name)
        names = run_study_names(optuna.get_all_study_names(storage=storage))
    except Exception as exc:  # optuna raises many kinds for a bad URL
        raise UsageError(f"cannot open Optuna storage '{redact(storage_url)}': {_one_line(exc)}") from exc
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
