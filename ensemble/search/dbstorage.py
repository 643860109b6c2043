"""A database storage that rides out a lost connection: a restarted server, a network cut, a paused process.

Optuna's ``RDBStorage`` raises on the first call after its connection is gone, and its heartbeat thread
dies of that error (the live trial is then failed as stale). :class:`ReconnectingStorage` wraps it: the
engine checks each pooled connection before use (``pool_pre_ping``), a call that fails because the
connection is gone is made again with a growing wait, up to ``RECONNECT_S`` seconds, and a heartbeat
that cannot be recorded is skipped (the next one tries again) instead of stopping the thread.

A trial whose heartbeat stopped is tagged (``killed``) as the storage reports it stale, before it is
failed: both Optuna's own sweep (before each trial) and :func:`ensemble.search.storage.fail_dead_heartbeats`
go through here, so such a trial never counts as a finished one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

ENGINE_KWARGS = {"pool_pre_ping": True}  # a connection the server dropped is replaced before use
RECONNECT_S = 60.0  # how long a call keeps trying while the database cannot be reached
FIRST_WAIT_S = 0.25
MAX_WAIT_S = 4.0


def is_disconnect(exc: BaseException) -> bool:
    """``exc`` (or what caused it) says the database connection is gone or cannot be made."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (sa.OperationalError, sa.InterfaceError)):
            return True
        if isinstance(cur, sa.DBAPIError) and cur.connection_invalidated:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


P = ParamSpec("P")
R = TypeVar("R")


def retrying(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``call(*args, **kwargs)``, made again while it fails for a lost connection (at most ``RECONNECT_S`` s)."""
    waited, wait = 0.0, FIRST_WAIT_S
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if waited >= RECONNECT_S or not is_disconnect(exc):
                raise
        time.sleep(wait)
        waited += wait
        wait = min(2 * wait, MAX_WAIT_S)


class ReconnectingStorage(BaseStorage, BaseHeartbeat):
    """``inner`` (an ``RDBStorage``, perhaps cached) with reconnection, a heartbeat that survives errors, and
    stale trials tagged with ``stale_tags`` as they are found.

    ``beats``: whether Optuna's ``optimize`` keeps a heartbeat for the trials it runs through this storage
    (stale trials are found either way: the inner storage has a heartbeat interval).
    """

    def __init__(self, inner: BaseStorage, *, beats: bool, stale_tags: dict[str, Any]) -> None:
        assert isinstance(inner, BaseHeartbeat) and inner.get_heartbeat_interval() is not None
        self.inner = inner
        self.beats = beats
        self.stale_tags = dict(stale_tags)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval() if self.beats else None  # type: ignore[attr-defined]

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        return self.inner.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            retrying(self.inner.record_heartbeat, trial_id)  # type: ignore[attr-defined]
        except Exception:  # this beat is lost, not the thread: the next one tries again
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = retrying(self.inner._get_stale_trial_ids, study_id)  # type: ignore[attr-defined]
        for trial_id in stale:
            try:
                for key, value in self.stale_tags.items():
                    retrying(self.inner.set_trial_user_attr, trial_id, key, value)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process failed it first (and tagged it)
        return stale

    def __getattr__(self, name: str) -> Any:  # anything else: the wrapped storage's
        if name == "inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def _retried(name: str) -> Callable[..., object]:
    def method(self: ReconnectingStorage, *args: object, **kwargs: object) -> object:
        return retrying(getattr(self.inner, name), *args, **kwargs)

    method.__name__ = name
    return method


for _name, _value in sorted(vars(BaseStorage).items()):
    if callable(_value) and not _name.startswith("_") and _name not in ReconnectingStorage.__dict__:
        setattr(ReconnectingStorage, _name, _retried(_name))
ReconnectingStorage.__abstractmethods__ = frozenset()
