"""One run's studies inside a shared Optuna storage: stored as ``RUN.NAME``, seen as ``NAME``.

Every run uses the same study names (``cnn``, ``baseline-FAMILY``, ``baseline-fallback``). In a run's
own journal file that is all it needs; in a database that many runs share, :class:`RunScopedStorage`
stores each study under the run's name (``main.cnn``) and shows the run only its own studies, under
their short names. Everything else is passed to the wrapped storage unchanged, so the rest of the
code (and Optuna) never sees the prefix; ``optuna-dashboard URL`` shows the stored names.

A run name may contain the separator (``a.b``), a study name never does: a stored name belongs to the
run before its last ``.``. So run ``a`` does not see run ``a.b``'s ``a.b.cnn`` (as ``b.cnn``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection

SEPARATOR = "."


def stored_name(run_name: str, study: str) -> str:
    """The name under which a run's study is kept in a shared storage."""
    return f"{run_name}{SEPARATOR}{study}"


def owns(prefix: str, stored: str) -> bool:
    """Whether the stored study name ``stored`` is one of the run with ``prefix`` (``RUN.``), not a longer run's."""
    return stored.startswith(prefix) and SEPARATOR not in stored[len(prefix) :]


class RunScopedStorage(BaseStorage):
    """``inner`` as seen by run ``run_name``: its studies only, without the ``RUN.`` prefix."""

    def __init__(self, inner: BaseStorage, run_name: str) -> None:
        self.inner = inner
        self.prefix = stored_name(run_name, "")

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        if study_name and SEPARATOR in study_name:
            raise ValueError(f"a run's study name cannot contain '{SEPARATOR}': '{study_name}'")
        return self.inner.create_new_study(directions, self.prefix + study_name if study_name else None)

    def get_study_id_from_name(self, study_name: str) -> int:
        if SEPARATOR in study_name:  # another run's (``a`` asking for ``b.cnn`` would get run ``a.b``'s)
            raise KeyError(f"No such study {study_name} in this run.")
        return self.inner.get_study_id_from_name(self.prefix + study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.inner.get_study_name_from_id(study_id).removeprefix(self.prefix)

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        mine = []
        for study in self.inner.get_all_studies():
            if owns(self.prefix, study.study_name):
                study = copy.copy(study)
                study.study_name = study.study_name.removeprefix(self.prefix)
                mine.append(study)
        return mine

    def __getattr__(self, name: str) -> Any:  # anything not about names: the wrapped storage's
        return getattr(self.inner, name)


def _delegate(name: str) -> Callable[..., object]:
    def method(self: RunScopedStorage, *args: object, **kwargs: object) -> object:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


_PASSED_ON = {
    "get_n_trials", "get_best_trial", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs",
    "check_trial_is_updatable", "remove_session",
}  # fmt: skip
for _name in sorted(BaseStorage.__abstractmethods__ | _PASSED_ON):
    if _name not in RunScopedStorage.__dict__:
        setattr(RunScopedStorage, _name, _delegate(_name))
RunScopedStorage.__abstractmethods__ = frozenset()


class RunScopedHeartbeatStorage(RunScopedStorage, BaseHeartbeat):
    """:class:`RunScopedStorage` of a storage with a heartbeat (an ``RDBStorage``): the heartbeat passes through."""

    def record_heartbeat(self, trial_id: int) -> None:
        self.inner.record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.inner._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None:
        return self.inner.get_heartbeat_stale_trial_callback()


RunScopedHeartbeatStorage.__abstractmethods__ = frozenset()


def scoped(inner: BaseStorage, run_name: str) -> RunScopedStorage:
    """``inner`` seen through run ``run_name``'s names, keeping its heartbeat if it has one."""
    cls = RunScopedHeartbeatStorage if isinstance(inner, BaseHeartbeat) else RunScopedStorage
    return cls(inner, run_name)
