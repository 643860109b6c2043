"""OS file locks that die with their process.

- :func:`run_lock`: one writer per run. ``ensemble run``, ``build`` and ``report`` hold
  ``runs/.locks/NAME.lock``; a second one exits 2 with "run NAME is in use by pid P on HOST".
  Processes that only add trials (``ensemble search``, ``ensemble baselines``) do not take it.
- :func:`worker_token`: every process that adds trials holds ``runs/NAME/.workers/TOKEN.lock``
  for its whole life and tags its trials with TOKEN. A trial whose token lock can be taken is
  the trial of a dead process, even when its pid was reused (:func:`token_alive`).
- :func:`locked`: a short exclusive lock for read-modify-write of a small shared file.

All are ``fcntl.flock`` locks: the kernel drops them when the process dies, SIGKILL included.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ensemble.errors import UsageError

LOCKS_DIR = ".locks"
WORKERS_DIR = ".workers"
_held: dict[tuple[int, int], tuple[int, int]] = {}  # lock file (st_dev, st_ino) -> (fd, depth): re-entrant in a process
_tokens: dict[str, tuple[str, int]] = {}  # run root -> (token, fd) of this process


def host() -> str:
    """This machine's name, as recorded in trials and lock files."""
    return socket.gethostname()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def run_lock(runs_root: Path, name: str) -> Iterator[None]:
    """Hold the run's writer lock (re-entrant within one process); UsageError if another process has it."""
    path = runs_root / LOCKS_DIR / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)  # the file itself, however the path is spelled (a symlinked runs folder)
    if key in _held:
        os.close(fd)  # another open of the file: closing it leaves this process's flock (on the first fd) alone
        held, depth = _held[key]
        _held[key] = (held, depth + 1)
        try:
            yield
        finally:
            _held[key] = (held, _held[key][1] - 1)
        return
    if not _try_flock(fd):
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        pid, where = (holder + ["?", "?"])[:2]
        raise UsageError(f"run {name} is in use by pid {pid} on {where}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {host()}\n".encode(), 0)
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        _held.pop(key, None)
        os.close(fd)  # releases the lock; the file stays (deleting it would race with a waiting process)


def worker_token(run_root: Path) -> str:
    """This process's token for trials of the run at ``run_root`` (its lock is held until the process exits)."""
    got = own_token(run_root)
    if got is not None:
        return got
    token = f"{host()}-{os.getpid()}-{secrets.token_hex(4)}"
    folder = run_root / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{token}.lock"
    # Locked under a private name, then renamed into place: a liveness check that opens TOKEN.lock
    # always finds it locked (created unlocked under its own name, a check could unlink a live token).
    fresh = folder / f".{token}.new"
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(fresh, path)
    _tokens[str(run_root.resolve())] = (token, fd)
    atexit.register(_drop_token, path, os.getpid())  # a killed process's token is removed by the next check
    return token


def _drop_token(path: Path, pid: int) -> None:
    if os.getpid() == pid:
        path.unlink(missing_ok=True)


def own_token(run_root: Path) -> str | None:
    """This process's live token for the run, if it has one (a token whose file was deleted is dropped)."""
    key = str(run_root.resolve())
    got = _tokens.get(key)
    if got is None:
        return None
    token, fd = got
    if token.split("-")[-2] == str(os.getpid()) and os.fstat(fd).st_nlink > 0:
        return token
    _tokens.pop(key)
    os.close(fd)
    return None


def token_alive(run_root: Path, token: str) -> bool:
    """True while the process that holds ``token`` lives (tokens of other hosts are assumed alive)."""
    if not token.startswith(f"{host()}-"):
        return True
    path = run_root / WORKERS_DIR / f"{token}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not _try_flock(fd):
            return True
        path.unlink(missing_ok=True)  # a dead worker's token: tidy it away
        return False
    finally:
        os.close(fd)


UNBORN_AGE_S = 60.0  # a .TOKEN.new file older than this, and unlocked, belongs to a process that died making it


def sweep_unborn_tokens(run_root: Path) -> list[Path]:
    """Remove ``.TOKEN.new`` files of processes killed between creating and renaming their token; returns them.

    One that is young, or still locked, may be a live process's token being made: it stays.
    """
    import time

    gone = []
    for p in sorted((run_root / WORKERS_DIR).glob(".*.new")):
        try:
            if time.time() - p.stat().st_mtime < UNBORN_AGE_S:
                continue
            fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if _try_flock(fd):
                p.unlink(missing_ok=True)
                gone.append(p)
        finally:
            os.close(fd)
    return gone


def live_tokens(run_root: Path) -> list[str]:
    """Tokens of this host's live worker processes on the run (this process's own included)."""
    folder = run_root / WORKERS_DIR
    if not folder.is_dir():
        return []
    return [p.stem for p in sorted(folder.glob("*.lock")) if token_alive(run_root, p.stem)]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (created if missing) for a short read-modify-write; blocks until free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
