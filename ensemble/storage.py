"""Optuna storage for a run: a journal file by default, safe for several processes.

Optuna's FAQ recommends ``JournalStorage`` with ``JournalFileBackend`` for parallel
workers on one machine: SQLite raises "database is locked" under concurrent writers.
``optuna-dashboard`` and the ``optuna`` CLI both open the journal file directly.
Any Optuna storage URL (``postgresql://...``, ``mysql://...``) may be passed instead.
"""

from __future__ import annotations

import shlex
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
