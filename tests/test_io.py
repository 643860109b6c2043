"""File helpers: shared file modes, durable atomic writes, the ensemble folder swap."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from ensemble import io as eio


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_gives_the_usual_mode(tmp_path: Path, umask_022, durable: bool) -> None:
    path = eio.atomic_write(tmp_path / "sub" / "submission.csv", "ImageId,Label\n", durable=durable)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == "ImageId,Label\n" and [p.name for p in path.parent.iterdir()] == ["submission.csv"]


def test_atomic_write_follows_a_stricter_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = eio.write_json(tmp_path / "manifest.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and eio.read_json(path) == {"a": 1}


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(text)
    return path


def _renameat2_works(tmp: Path) -> str | None:
    """None where this system and filesystem exchange two folders with renameat2, else why not (for a skip)."""
    import ctypes

    a, b = _folder(tmp / "probe-a", "a"), _folder(tmp / "probe-b", "b")
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return "the C library has no renameat2"
    try:
        if fn(-100, bytes(a), -100, bytes(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            return f"renameat2 RENAME_EXCHANGE fails here: {os.strerror(ctypes.get_errno())}"
        return None
    finally:
        shutil.rmtree(a), shutil.rmtree(b)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_dir_replaces_the_folder(tmp_path: Path, monkeypatch, exchange: bool) -> None:
    if exchange and (why := _renameat2_works(tmp_path)):
        pytest.skip(why)
    real = eio._exchange if exchange else (lambda a, b: False)
    exchanged: list[bool] = []
    monkeypatch.setattr(eio, "_exchange", lambda a, b: exchanged.append(real(a, b)) or exchanged[-1])
    final = _folder(tmp_path / "ensemble", "old")
    new = _folder(tmp_path / ".ensemble-tmp-1", "new")
    eio.swap_dir(new, final, old=tmp_path / ".ensemble-old-1")
    assert exchanged == [exchange]  # the path under test ran: one atomic exchange, or the two renames after it failed
    assert (final / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble"]
    eio.swap_dir(_folder(tmp_path / "first", "x"), tmp_path / "absent", old=tmp_path / "unused")
    assert (tmp_path / "absent" / "manifest.json").read_text() == "x"
