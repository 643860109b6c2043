"""Ctrl-C during a search: the trials it stops are treated like killed ones, not like finished ones.

An interrupted trial is tagged ``killed`` (so it does not count toward ``--trials``, see
:func:`ensemble.search.storage.was_killed`) and ``interrupted``, and its parameters are queued again
(``enqueue_trial``), so the next process of the run trains it first. The search raises
:class:`~ensemble.errors.Interrupted` (a ``KeyboardInterrupt``), which the CLI turns into one line
that says how to resume, with exit code 130.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from ensemble.errors import Interrupted

if TYPE_CHECKING:
    import optuna

INTERRUPTED_REASON = "interrupted (Ctrl-C): queued again"


def interrupted(trial: optuna.Trial, *, queue: bool = True, **retry_attrs: object) -> Interrupted:
    """Tag ``trial`` as interrupted (not counted) and queue its parameters again (``queue=False``: the caller
    queues it again itself, as a baseline refit is); the exception to raise."""
    trial.set_user_attr("fail_reason", INTERRUPTED_REASON)
    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("killed", True)  # counted like a killed trial: not at all
    if queue:
        trial.study.enqueue_trial(dict(trial.params), user_attrs={**retry_attrs, "retry_of": trial.number})
    return Interrupted(f"trial {trial.number} will run again")


@contextmanager
def on_interrupt(stop: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """While inside: Ctrl-C sets the event (trials in other threads see it), calls ``stop`` (e.g. kill the
    trainer processes, so those trials end now), then raises KeyboardInterrupt in the main thread as usual.

    Outside the main thread, or where SIGINT is ignored (a background job), nothing is installed.
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()
        if stop is not None:
            stop()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


class _NoInterrupt(logging.Filter):
    """Drop Optuna's warning (and traceback) about a trial that Ctrl-C stopped, and its "failed with value" line."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        number = re.match(r"Trial (\d+) ", message)
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in message or "Interrupted(" in message:
            if number:
                self.trials.add(number[1])
            return False
        return not (number and number[1] in self.trials and "failed with value" in message)


def quiet_interrupts() -> None:
    """Ctrl-C: one line from the CLI, not Optuna's traceback of the trial it stopped (installed once)."""
    import optuna  # noqa: F401  (creates the 'optuna' logger's handler)

    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoInterrupt) for f in handler.filters):
            handler.addFilter(_NoInterrupt())
