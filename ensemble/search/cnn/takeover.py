"""A trial another process failed while this one was paused or cut off: drop it and go on.

A process stopped (SIGSTOP, a laptop lid, a long network cut) for longer than the heartbeat's grace
period looks dead: another process fails its trial and queues it again. When the paused process
resumes, Optuna refuses every write to that trial (``UpdateFinishedTrialError``) and then refuses to
tell it (``Cannot tell a FAIL trial``), which ends ``study.optimize``. :func:`optimize_past_takeovers`
says so on one line and goes on with the next trial.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ensemble.errors import TrialError

if TYPE_CHECKING:
    import optuna

Callback = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]


class TrialTakenOver(TrialError):
    """This process's trial was failed (and queued again) by another process: its result cannot be recorded."""

    def __init__(self, number: int) -> None:
        super().__init__(
            f"trial {number} was failed and queued again by another process while this one was paused or cut off "
            "(its heartbeat stopped): dropped, going on"
        )
        self.number = number


def is_takeover(exc: BaseException) -> bool:
    """``exc`` ended ``study.optimize`` because a trial of this process was already finished elsewhere."""
    import optuna

    if isinstance(exc, (TrialTakenOver, optuna.exceptions.UpdateFinishedTrialError)):
        return True
    return isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a ")


class _QuietTakeovers(logging.Filter):
    """Drop Optuna's warning (and traceback) for a trial taken over: :class:`TrialTakenOver` says it on one line."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[TrialTakenOver] = []

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TrialTakenOver):
            self.taken.append(exc)
            return False
        return not any(record.getMessage().startswith(f"Trial {t.number} failed") for t in self.taken)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[_QuietTakeovers]:
    quiet = _QuietTakeovers()
    logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        logger.removeFilter(quiet)


def optimize_past_takeovers(
    study: optuna.Study,
    run: Callable[[float | None], None],
    *,
    timeout: float | None,
    callbacks: list[Callback],
    say: Callable[[str], None],
) -> None:
    """``run(timeout_left)`` (one ``study.optimize``), again after each trial taken over, until it ends on its
    own, ``callbacks`` stop the study (as after any trial), or the time is up."""
    end = None if timeout is None else time.time() + timeout
    with _quiet(logging.getLogger("optuna.study._optimize")) as quiet:
        while True:
            left = None if end is None else end - time.time()
            if left is not None and left <= 0:
                return
            try:
                run(left)
                return
            except Exception as exc:
                if not is_takeover(exc):
                    raise
                numbers = [t.number for t in quiet.taken]
                say(str(quiet.taken[-1]) if quiet.taken else f"a trial was failed by another process: dropped ({exc})")
                quiet.taken.clear()
                if _stopped(study, callbacks, numbers):
                    return


def _stopped(study: optuna.Study, callbacks: list[Callback], numbers: list[int]) -> bool:
    """Whether ``callbacks`` stop the study now, as they would after a trial (``study.stop()`` outside optimize)."""
    asked: list[bool] = []
    probe = copy.copy(study)
    probe.stop = lambda: asked.append(True)  # type: ignore[method-assign]
    trials = probe.get_trials(deepcopy=False)
    last = next((t for t in trials if t.number in numbers), trials[-1] if trials else None)
    for callback in callbacks:
        if last is not None:
            callback(probe, last)
    return bool(asked)
