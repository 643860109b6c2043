"""Small file helpers: atomic writes and JSON."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` survive a crash (no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes, *, durable: bool = True) -> Path:
    """Write to a temporary file in the same folder, then rename over ``path``.

    The file gets the usual mode (0666 less the umask, as ``open`` would give), not mkstemp's 0600,
    so shared outputs stay readable. ``durable``: fsync the file and its folder around the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: object) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def fsync_tree(folder: str | Path) -> None:
    """fsync every file below ``folder`` and the folders themselves (before renaming it into place)."""
    root = Path(folder)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0


def swap_dir(new: Path, final: Path, *, old: Path) -> None:
    """Put folder ``new`` in place of ``final``; the previous ``final`` is deleted only once ``new`` is there.

    With renameat2 the swap is one atomic step. Elsewhere ``final`` is first renamed to ``old``: a
    crash between the two renames leaves it there, and ``ensemble.data.runs.sweep_debris`` restores it.
    """
    if not final.exists():
        new.rename(final)
    elif _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # the previous contents now sit at ``new``'s path
    else:
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


@contextmanager
def rebuilt_dir(final: Path) -> Iterator[Path]:
    """A temporary folder path beside ``final`` (not created) to build its new contents in.

    When the block ends without an error, the new folder is fsynced and swapped in whole
    (:func:`swap_dir`); the temporary folder is removed in any case.
    """
    stamp = time.time_ns()
    tmp = final.with_name(f".{final.name}-tmp-{stamp}")
    try:
        yield tmp
        fsync_tree(tmp)
        swap_dir(tmp, final, old=final.with_name(f".{final.name}-old-{stamp}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save a NumPy array as .npy."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write(path, buf.getvalue())
