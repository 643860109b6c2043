"""The ``ensemble`` logger: every stage's status lines, ``[mm:ss stage] message``.

The CLI and :func:`ensemble.fit` print them on stdout through :func:`show_progress`. A notebook user
quiets them with ``logging.getLogger("ensemble").setLevel(logging.WARNING)``, or routes them to any
handler of their own (a record carries ``stage`` and ``elapsed``, the seconds since the run started).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = logging.getLogger("ensemble")


class StageFormatter(logging.Formatter):
    """``[mm:ss stage] message`` for records that carry a stage; the bare message otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        stage = getattr(record, "stage", None)
        elapsed = getattr(record, "elapsed", None)
        if stage is None or elapsed is None:
            return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"
        m, s = divmod(int(elapsed), 60)
        return f"[{m:02d}:{s:02d} {stage}] {msg}"


class _StdoutHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is at each record (pytest and notebooks swap it)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._fixed = stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fixed:
            self.stream = sys.stdout  # not setStream: it flushes the old stream, which may be closed
        super().emit(record)


def show_progress(stream: TextIO | None = None) -> logging.Handler:
    """Print the ``ensemble`` logger's INFO lines on ``stream`` (default: the current stdout); idempotent.

    Does nothing when the logger already has a handler: one configured by the user wins.
    """
    if LOGGER.handlers:
        return LOGGER.handlers[0]
    handler = _StdoutHandler(stream)
    handler.setFormatter(StageFormatter())
    LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # the lines are shown once, not again by a root handler
    return handler


def stage_line(stage: str, elapsed: float, msg: str) -> None:
    """Log one status line of ``stage``, ``elapsed`` seconds into the run."""
    LOGGER.info(msg, extra={"stage": stage, "elapsed": elapsed})


def info(msg: str) -> None:
    """Log one message of a library call (no stage): the default ``say`` of every function that reports progress."""
    LOGGER.info(msg)
