"""Kaggle submission files: write atomically, check strictly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble.data import file_member, load_test, locate
from ensemble.errors import DataError
from ensemble.io import atomic_write

HEADER = "ImageId,Label"
KAGGLE_TEST_ROWS = 28_000


def write_submission(path: str | Path, labels: np.ndarray) -> Path:
    """Write ``ImageId,Label`` rows (ids from 1) via a temporary file and a rename."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"{path}: need a non-empty 1-D array of labels, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must be in 0-9")
    body = "".join(f"{i},{int(v)}\n" for i, v in enumerate(labels.tolist(), start=1))
    return atomic_write(path, HEADER + "\n" + body)


def test_rows(test: str | Path) -> int:
    """Number of rows of a test CSV, or of the test member of a dataset folder or zip."""
    p = Path(test)
    if p.is_file() and not p.name.endswith(".zip"):
        return int(load_test(file_member(p)).shape[0])
    return int(load_test(locate(p).test).shape[0])


def check_submission(path: str | Path, n_rows: int = KAGGLE_TEST_ROWS) -> np.ndarray:
    """Validate a submission and return its labels ordered by ImageId."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: missing file")
    text = p.read_bytes().decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{p}: file is empty")
    if lines[0].strip() != HEADER:
        raise DataError(f"{p}: line 1: header must be exactly '{HEADER}', found '{lines[0].strip()}'")
    while lines and not lines[-1].strip():
        lines.pop()
    labels = np.full(n_rows, -1, np.int64)
    seen_at: dict[int, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.strip().split(",")
        if len(fields) != 2:
            raise DataError(f"{p}: line {lineno}: {len(fields)} columns, expected 2 (ImageId,Label)")
        try:
            image_id = int(fields[0])
        except ValueError:
            raise DataError(f"{p}: line {lineno}, column 1 'ImageId': not an integer: '{fields[0]}'") from None
        try:
            label = int(fields[1])
        except ValueError:
            raise DataError(f"{p}: line {lineno}, column 2 'Label': not an integer: '{fields[1]}'") from None
        if not 1 <= image_id <= n_rows:
            raise DataError(f"{p}: line {lineno}, column 1 'ImageId': {image_id} outside 1-{n_rows}")
        if image_id in seen_at:
            raise DataError(f"{p}: line {lineno}, column 1 'ImageId': {image_id} repeats line {seen_at[image_id]}")
        if not 0 <= label <= 9:
            raise DataError(f"{p}: line {lineno}, column 2 'Label': {label} outside 0-9")
        seen_at[image_id] = lineno
        labels[image_id - 1] = label
    if len(seen_at) != n_rows:
        missing = np.flatnonzero(labels < 0) + 1
        raise DataError(f"{p}: {n_rows - len(seen_at)} of {n_rows} ImageIds missing (first: {missing[0]})")
    return labels
