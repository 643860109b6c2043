"""Optuna storage for a run: a journal file by default, safe for several processes.

Optuna's FAQ recommends ``JournalStorage`` with ``JournalFileBackend`` for parallel
workers on one machine: SQLite raises "database is locked" under concurrent writers.
``optuna-dashboard`` and the ``optuna`` CLI both open the journal file directly.
Any Optuna storage URL (``postgresql://...``, ``mysql://...``) may be passed instead.
"""

from __future__ import annotations

import os
import shlex
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from ensemble.runs import Run

JOURNAL_NAME = "optuna.journal"


def storage_location(run: Run, url: str | None = None) -> str:
    """The storage URL or journal path a run's studies live in."""
    return url if url else str(run.path(JOURNAL_NAME))


def _is_url(location: str) -> bool:
    return "://" in location


def open_storage(run: Run, url: str | None = None) -> optuna.storages.BaseStorage:
    """Open the run's storage (journal file unless ``url`` is an Optuna storage URL)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    loc = storage_location(run, url)
    try:
        if _is_url(loc):
            return optuna.storages.get_storage(loc)
        Path(loc).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(loc))
    except Exception as exc:  # optuna raises many kinds for a bad URL
        raise UsageError(f"cannot open Optuna storage '{loc}': {exc}") from exc


def dashboard_command(run: Run, url: str | None = None) -> str:
    """The exact shell command that opens this run in optuna-dashboard."""
    return f"optuna-dashboard {shlex.quote(storage_location(run, url))}"


def optuna_cli_args(run: Run, url: str | None = None) -> str:
    """``--storage`` arguments for the ``optuna`` CLI (trials, best-trial, ...)."""
    loc = storage_location(run, url)
    if _is_url(loc):
        return f"--storage {shlex.quote(loc)}"
    return f"--storage {shlex.quote(loc)} --storage-class JournalFileBackend"


def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs ``trial``, so a later invocation can tell a live trial from a killed one."""
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose process on this host is gone (killed) as FAIL, so they don't block or count."""
    import optuna

    stale = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if pid is not None and (where != host or _alive(int(pid))):
            continue  # alive here, or another machine's worker (shared storage): leave it
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "left RUNNING by a process that stopped")
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
