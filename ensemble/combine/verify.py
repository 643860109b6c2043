"""The sha256 checks of an ensemble folder: a file is read only when its manifest lists it, from the very bytes
whose hash was checked, and never from outside the folder."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ensemble.combine.manifest import MANIFEST
from ensemble.errors import ArtifactError

if TYPE_CHECKING:
    from ensemble.combine.manifest import Manifest


def _safe_path(folder: Path, rel: str) -> Path:
    """``folder / rel`` for a manifest path that stays inside ``folder``: relative, no ``..``, no symlink out."""
    p = Path(rel) if isinstance(rel, str) else None
    if p is None or not p.parts or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ArtifactError(f"{folder / MANIFEST}: artifact path '{rel}' leaves the ensemble folder")
    path = folder / p
    try:
        inside = path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError):  # missing or a link loop: reported when it is opened
        return path
    if not inside:
        raise ArtifactError(f"{path}: a symlink out of the ensemble folder, refusing to load it")
    return path


def _open_listed(folder: Path, rel: str) -> tuple[Path, BinaryIO]:
    """Open a manifest path for reading: inside the folder, a regular file, no link followed when opening."""
    path = _safe_path(folder, rel)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path.resolve(), flags)  # links inside the folder were resolved (and checked) above
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing, but listed in {MANIFEST}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise ArtifactError(f"{path}: not a regular file, refusing to load it")
    return path, fh


def _check_sha(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:16]}... does not match {MANIFEST} ({expected[:16]}...); "
            "the file changed after `ensemble build`, refusing to load it"
        )


def verify_artifacts(folder: Path, manifest: Manifest) -> None:
    """Refuse any artifact that is missing, outside the folder or whose sha256 differs from the manifest."""
    for rel, expected in manifest.artifacts.items():
        path, fh = _open_listed(folder, rel)
        h = hashlib.sha256()
        with fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        _check_sha(path, h.hexdigest(), expected)


def read_verified(folder: Path, manifest: Manifest, rel: str) -> bytes:
    """A manifest-listed file's bytes, read once and checked against its sha256.

    Load from these bytes, never from the path again: the file cannot change between check and load.
    A file the manifest does not list is refused, whatever is on disk.
    """
    expected = manifest.artifacts.get(rel)
    if expected is None:
        raise ArtifactError(f"{folder / str(rel)}: not listed with a sha256 in {MANIFEST}, refusing to load it")
    path, fh = _open_listed(folder, rel)
    with fh:
        data = fh.read()
    _check_sha(path, hashlib.sha256(data).hexdigest(), expected)
    return data
