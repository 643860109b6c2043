"""Kaggle Digit Recognizer data: locate, parse, validate and fingerprint.

A dataset is given as a directory holding ``train.csv``/``test.csv`` (plain or
``.gz``) or as Kaggle's ``digit-recognizer.zip``. Parsing: :mod:`ensemble.data.csvparse`.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ensemble.data.csvparse import (
    N_PIXELS,
    PIXEL_COLUMNS,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    Member,
    parse_columns,
    parse_csv,
)
from ensemble.errors import DataError

__all__ = [
    "N_PIXELS", "PIXEL_COLUMNS", "TEST_COLUMNS", "TRAIN_COLUMNS", "Dataset", "Member", "Source",
    "file_member", "fingerprint", "load_dataset", "load_test", "load_train", "locate", "parse_columns", "parse_csv",
    "summarize",
]  # fmt: skip


@dataclass(frozen=True)
class Source:
    """Where a dataset lives: its train and test members."""

    path: Path
    train: Member
    test: Member


@dataclass(frozen=True)
class Dataset:
    """Parsed competition data: uint8 images of shape (N, 28, 28) and labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    source: str
    _hash: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the parsed arrays: the same for csv, csv.gz and zip forms."""
        if not self._hash:
            self._hash.append(fingerprint(self.x_train, self.y_train, self.x_test))
        return self._hash[0]


def fingerprint(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> str:
    """Return the sha256 hex digest identifying a dataset's content."""
    h = hashlib.sha256()
    for tag, arr in ((b"x_train", x_train), (b"y_train", y_train), (b"x_test", x_test)):
        h.update(tag + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr, dtype=np.uint8).data)
    return h.hexdigest()


# --------------------------------------------------------------------------- locate


def file_member(path: Path) -> Member:
    """A plain or gzipped CSV file on disk."""
    if path.suffix == ".gz":
        return Member(str(path), lambda: gzip.open(path, "rb"))
    return Member(str(path), lambda: open(path, "rb"))


def _zip_member(zpath: Path, inner: str) -> Member:
    def opener() -> IO[bytes]:
        zf = zipfile.ZipFile(zpath)
        stream = zf.open(inner)
        return gzip.GzipFile(fileobj=stream) if inner.endswith(".gz") else stream

    return Member(f"{zpath}:{inner}", opener)


def _find_in_zip(zpath: Path, names: list[str], stem: str) -> Member:
    for cand in (f"{stem}.csv", f"{stem}.csv.gz"):
        hits = [n for n in names if n == cand or n.endswith("/" + cand)]
        if hits:
            return _zip_member(zpath, hits[0])
    raise DataError(f"{zpath}: zip has no '{stem}.csv' member (members: {', '.join(names) or 'none'})")


def locate(path: str | Path) -> Source:
    """Find train and test CSVs in a directory or a Kaggle zip."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_dir():
        zips = [p / "digit-recognizer.zip"]
        for stem in ("train", "test"):
            if not any((p / f"{stem}.csv{ext}").exists() for ext in ("", ".gz")) and zips[0].exists():
                return locate(zips[0])
        members = []
        for stem in ("train", "test"):
            found = [p / f"{stem}.csv{ext}" for ext in ("", ".gz") if (p / f"{stem}.csv{ext}").exists()]
            if not found:
                raise DataError(f"{p / (stem + '.csv')}: missing file (looked for {stem}.csv and {stem}.csv.gz)")
            members.append(file_member(found[0]))
        return Source(p, members[0], members[1])
    if zipfile.is_zipfile(p) or p.suffix == ".zip":
        try:
            with zipfile.ZipFile(p) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{p}: corrupt zip file ({exc})") from exc
        return Source(p, _find_in_zip(p, names, "train"), _find_in_zip(p, names, "test"))
    raise DataError(f"{p}: expected a directory with train.csv/test.csv or a digit-recognizer.zip")


def load_train(member: Member) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N, 28, 28) uint8, labels (N,) uint8) from a train CSV."""
    labels, pixels = parse_columns(member, TRAIN_COLUMNS)
    assert labels is not None
    return pixels.reshape(-1, 28, 28), labels


def load_test(member: Member) -> np.ndarray:
    """Return test images (M, 28, 28) uint8 from a test CSV."""
    return parse_columns(member, TEST_COLUMNS)[1].reshape(-1, 28, 28)


def read_test_images(path: str | Path) -> np.ndarray:
    """Test images (N, 28, 28) uint8 from a test CSV (.csv/.csv.gz), a dataset folder or its zip."""
    p = Path(path)
    if p.is_file() and not p.name.endswith(".zip"):
        return load_test(file_member(p))
    return load_test(locate(p).test)


def load_dataset(path: str | Path) -> Dataset:
    """Locate, parse and validate a full competition dataset."""
    src = locate(path)
    x_train, y_train = load_train(src.train)
    x_test = load_test(src.test)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, source=str(src.path))


def summarize(ds: Dataset) -> dict[str, object]:
    """Facts that ``ensemble data check`` prints."""
    counts = np.bincount(ds.y_train, minlength=10)
    nbytes = ds.x_train.nbytes + ds.y_train.nbytes + ds.x_test.nbytes
    return {
        "source": ds.source,
        "train_rows": int(ds.x_train.shape[0]),
        "test_rows": int(ds.x_test.shape[0]),
        "label_counts": {str(i): int(c) for i, c in enumerate(counts)},
        "pixel_min": int(min(ds.x_train.min(), ds.x_test.min())),
        "pixel_max": int(max(ds.x_train.max(), ds.x_test.max())),
        "memory_mb": round(nbytes / 2**20, 1),
        "fingerprint": ds.fingerprint,
    }
