"""Optuna storage for a run: a journal file by default, safe for several processes.

Optuna's FAQ recommends ``JournalStorage`` with ``JournalFileBackend`` for parallel
workers on one machine: SQLite raises "database is locked" under concurrent writers.
``optuna-dashboard`` and the ``optuna`` CLI both open the journal file directly.
Any Optuna storage URL (``postgresql://...``, ``mysql://...``) may be passed instead, or
``grpc://HOST:PORT`` for Optuna's ``GrpcStorageProxy`` in front of a database (``ensemble storage-proxy``).
"""

from __future__ import annotations

import copy
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble import logs
from ensemble.errors import UsageError
from ensemble.search.urls import driver_error, redact

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
GRPC_SCHEME = "grpc://"
DEFAULT_GRPC_PORT = 13000  # Optuna's default for run_grpc_proxy_server
GRPC_READY_S = 10.0
SCHEMA_RACE_TRIES = 8


def storage_location(run: Run, url: str | None = None) -> str:
    """The storage URL or journal path a run's studies live in."""
    return url if url else str(run.path(JOURNAL_NAME))


def _is_url(location: str) -> bool:
    return "://" in location


def open_storage(run: Run, url: str | None = None, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """Open the run's storage: its journal file, or the Optuna storage at ``url`` seen through the run's
    names (:class:`~ensemble.search.scoped.RunScopedStorage`: many runs can share one database).

    ``heartbeat`` (a database URL only): Optuna's heartbeat every ``$ENSEMBLE_HEARTBEAT_S`` seconds (60)
    for the trials run through it. A trial whose process stopped beating for twice that is failed (tagged
    ``killed``) and queued again (``RetryHeartbeatStaleTrialCallback``; its failed try does not count as
    finished) by whichever process opens the run's storage next, or asks for a trial.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from ensemble.search.scoped import scoped

    loc = storage_location(run, url)
    if _is_url(loc):
        beats = heartbeat and loc.split(":", 1)[0].split("+", 1)[0] in RDB_SCHEMES
        storage = scoped(connect(loc, heartbeat=beats), run.name)
        fail_dead_heartbeats(storage)  # whatever command opens the run: nothing stays RUNNING once its owner is dead
        return storage
    try:
        Path(loc).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(loc))
    except Exception as exc:
        raise UsageError(f"cannot open Optuna storage '{loc}': {driver_error(exc)}") from exc


def connect(url: str, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url`` (``grpc://HOST:PORT``: a ``GrpcStorageProxy``); a bad URL or an
    unreachable server is a one-line UsageError with the password hidden.

    A database storage reconnects after the server restarts or the network drops (see
    :mod:`ensemble.search.dbstorage`); ``heartbeat``: trials run through it keep Optuna's heartbeat.
    """
    if url.startswith(GRPC_SCHEME):
        return _grpc_proxy(url)
    for attempt in range(SCHEMA_RACE_TRIES):
        try:
            return _rdb_with_heartbeat(url, beats=heartbeat)
        except Exception as exc:  # optuna raises many kinds for a bad URL
            if "already exists" in str(exc) and attempt + 1 < SCHEMA_RACE_TRIES:
                # machines that open an empty database at once race to create Optuna's tables: the loser retries
                time.sleep(0.5 * (attempt + 1))
                continue
            raise UsageError(f"cannot open Optuna storage '{redact(url)}': {driver_error(exc, url)}") from exc
    raise AssertionError("unreachable")


def _grpc_proxy(url: str) -> optuna.storages.BaseStorage:
    import warnings
    from urllib.parse import urlsplit

    import optuna

    where = urlsplit(url)
    try:
        host, port = where.hostname or "localhost", where.port or DEFAULT_GRPC_PORT
    except ValueError as exc:
        raise UsageError(f"--storage {redact(url)}: expected grpc://HOST:PORT") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=GRPC_READY_S)
    except Exception as exc:
        raise UsageError(
            f"no Optuna storage proxy answers at {host}:{port} within {GRPC_READY_S:g} s "
            "(start one with: ensemble storage-proxy --storage URL)"
        ) from exc
    return proxy


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
        recorded = recorded if isinstance(recorded, dict) else {}  # written by anyone who can write the storage
        raise UsageError(
            f"study '{study.study_name}' of run '{run.name}' in the storage belongs to data "
            f"{ascii(str(recorded.get('data_fingerprint'))[:16])} split {recorded.get('split')}, but this run has data "
            f"'{mine['data_fingerprint'][:16]}' split {mine['split']}: use the same --data (and split: ensemble data "
            "--seed/--val-frac/--holdout-frac before the first command in a new folder), or another --run name"
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


def _rdb_with_heartbeat(url: str, *, beats: bool = True) -> optuna.storages.BaseStorage:
    """The database at ``url``, reconnecting; stale trials are found (and retried) whether or not ``beats``
    (the trials run through it keep a heartbeat)."""
    import warnings

    import optuna

    from ensemble.search.dbstorage import ENGINE_KWARGS, ReconnectingStorage

    interval = max(1, int(float(os.environ.get(HEARTBEAT_ENV) or 60)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = _retry_class()(max_retry=MAX_RETRY)  # a class made on first use: optuna is imported lazily
        rdb = optuna.storages.RDBStorage(
            url,
            engine_kwargs=dict(ENGINE_KWARGS),
            heartbeat_interval=interval,
            grace_period=2 * interval,
            heartbeat_stale_trial_callback=retry,
        )
    inner = rdb if beats else optuna.storages._CachedStorage(rdb)  # as optuna.storages.get_storage(url) gives
    return ReconnectingStorage(inner, beats=beats, stale_tags={"fail_reason": KILLED_REASON, "killed": True})


def fail_dead_heartbeats(storage: optuna.storages.BaseStorage) -> dict[str, list[int]]:
    """Fail the RUNNING trials, in every study of ``storage``, whose heartbeat stopped for longer than the
    grace period (their process was killed or cut off), and queue each again with the storage's callback:
    Optuna's ``fail_stale_trials``, for any command (not only one running trials with a heartbeat).

    The storage tags them ``killed`` as it finds them (:mod:`ensemble.search.dbstorage`). Returns the failed
    trial numbers by study name; a storage without a heartbeat (a journal file, gRPC) has none.
    """
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    if not isinstance(storage, BaseHeartbeat):
        return {}
    failed: dict[str, list[int]] = {}
    for frozen in storage.get_all_studies():
        stale = storage._get_stale_trial_ids(frozen._study_id)
        if not stale:
            continue
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        callback = storage.get_heartbeat_stale_trial_callback()
        for trial_id in stale:
            try:
                if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process failed it first
            trial = storage.get_trial(trial_id)
            failed.setdefault(frozen.study_name, []).append(trial.number)
            if callback is not None:
                callback(study, copy.deepcopy(trial))
    return failed


def worker_command(run: Run, url: str | None) -> str | None:
    """The command that adds a machine to this run's CNN search (a database storage only), password hidden."""
    from ensemble.search.artifacts import ARTIFACTS_ENV

    if not url or not _is_url(url):
        return None
    store = os.environ.get(ARTIFACTS_ENV)
    extra = f" --artifacts {shlex.quote(store)}" if store else ""
    return f"ENSEMBLE_STORAGE={shlex.quote(redact(url))} ensemble worker --run {run.name} --data DATA{extra}"


def dashboard_command(run: Run, url: str | None = None, artifacts: str | None = None) -> str:
    """The shell command that opens this run in optuna-dashboard (a URL's password shown as ``***``).

    With an artifact store (``artifacts``, else ``$ENSEMBLE_ARTIFACTS``) the dashboard lists each trial's
    files: a folder is its ``--artifact-dir``; an S3 bucket needs a ``--from-config`` TOML file, since
    ``--artifact-dir`` takes a local folder only.
    """
    from ensemble.search.artifacts import ARTIFACTS_ENV

    if (url or "").startswith(GRPC_SCHEME):
        line = "optuna-dashboard DATABASE_URL"
        why = "the database behind the gRPC proxy: the dashboard does not read gRPC"
    else:
        line, why = f"optuna-dashboard {shlex.quote(redact(storage_location(run, url)))}", ""
    store = artifacts or os.environ.get(ARTIFACTS_ENV) or None
    if store and store.startswith("s3://"):
        bucket = store.removeprefix("s3://").strip("/")
        line += " --from-config dashboard.toml"
        why = "; ".join(filter(None, [why, f'dashboard.toml: [artifact_store.boto3] bucket_name = "{bucket}"']))
    elif store:
        line += f" --artifact-dir {shlex.quote(store)}"
    return f"{line} ({why})" if why else line


def stored_study(run: Run, study: str, url: str | None = None) -> str:
    """A run's study as the storage names it (``RUN.study`` in a shared storage): for the ``optuna`` CLI."""
    from ensemble.search.scoped import stored_name

    return stored_name(run.name, study) if _is_url(storage_location(run, url)) else study


def optuna_cli_args(run: Run, url: str | None = None) -> str:
    """``--storage`` arguments for the ``optuna`` CLI (trials, best-trial, ...); a password shown as ``***``."""
    loc = storage_location(run, url)
    if loc.startswith(GRPC_SCHEME):
        return "--storage DATABASE_URL (the database behind the gRPC proxy: the optuna CLI does not read gRPC)"
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
    """A trial failed because its process died (it does not count as a finished trial). A trial tagged as its
    heartbeat went stale but finished by its process after all (it was paused, not dead) is not."""
    import optuna

    return bool(trial.user_attrs.get("killed")) and trial.state == optuna.trial.TrialState.FAIL


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


def serve_proxy(url: str, *, host: str, port: int, say: Callable[[str], None] = logs.info) -> None:
    """Serve the storage at ``url`` to many workers through Optuna's gRPC proxy (until interrupted).

    Workers then use ``--storage grpc://HOST:PORT``: they hold no database connection of their own, and
    the proxy caches what they read. Optuna's heartbeat does not pass through the proxy.
    """
    import optuna

    if url.startswith(GRPC_SCHEME) or not _is_url(url):
        raise UsageError(f"ensemble storage-proxy serves a database URL (postgresql://...), got '{redact(url)}'")
    storage = connect(url)
    say(f"storage-proxy: serving {redact(url)} on grpc://{host}:{port} (Ctrl-C stops it)")
    try:
        optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except RuntimeError as exc:  # grpc: the port is taken
        raise UsageError(f"cannot serve on {host}:{port}: {driver_error(exc, url)}") from exc
