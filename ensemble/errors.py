"""One exception hierarchy for everything the CLI reports as a one-line error."""

from __future__ import annotations


class EnsembleError(Exception):
    """Base class: the CLI prints the message on one line and exits with ``exit_code``."""

    exit_code = 2


class DataError(EnsembleError):
    """Input data is missing, malformed or changed (names file, line and column)."""


class UsageError(EnsembleError):
    """The command line or the run folder is inconsistent with what was asked."""


class SpaceError(EnsembleError):
    """A search-space file is invalid (names the file and the key)."""


class ArtifactError(EnsembleError):
    """A saved model, manifest or prediction file is missing or does not match its hash."""


class NoModelError(UsageError):
    """The run has no finished model yet: nothing to build or report (``ensemble run`` then trains a fallback)."""


class InvalidValueError(UsageError, ValueError):
    """An argument of a library call is out of range (also a ValueError, as in scikit-learn)."""


class TrialError(EnsembleError):
    """One trial failed (NaN loss, out of memory, a bad combination): the study records it as FAIL and goes on.

    As KerasTuner's FailedTrialError; any other exception escaping a trial stops the search.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a trial, which was queued again; the message says which (the CLI adds how to resume)."""


def one_line(exc: BaseException | str, limit: int | None = 300, *, typed: bool = False) -> str:
    """An exception's message (or a text) as one short line: library messages can span many lines.

    ``typed`` puts the exception's class name first ("ValueError: ..."); ``limit=None`` never cuts.
    """
    is_exc = isinstance(exc, BaseException)
    text = " ".join(str(exc).split()) or (type(exc).__name__ if is_exc else "")
    if typed and is_exc:
        text = f"{type(exc).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
