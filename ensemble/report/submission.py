"""Kaggle submission files: write atomically (checked before they replace the old file), check strictly."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import numpy as np

from ensemble.data.load import file_member, load_test, locate
from ensemble.errors import DataError
from ensemble.io import atomic_write

HEADER = "ImageId,Label"
KAGGLE_TEST_ROWS = 28_000
_ASCII_DIGITS = re.compile(r"[0-9]+")  # not \d, int() or isdigit(): those accept '٣', '+3', ' 3', '1_0'
_LABEL_DIGITS = "0123456789"


def _valid_labels(path: Path, labels: np.ndarray, n_rows: int | None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"{path}: need a non-empty 1-D array of labels, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers 0-9, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must be in 0-9")
    if n_rows is not None and labels.size != n_rows:
        raise DataError(f"{path}: {labels.size:,} labels for a test set of {n_rows:,} rows")
    return labels


def _csv_text(labels: np.ndarray) -> str:
    return HEADER + "\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels.tolist(), start=1))


def _check_new(tmp: Path, path: Path, labels: np.ndarray) -> None:
    """check_submission on the new file (expecting one row per label), then compare what it reads back."""
    try:
        got = check_submission(tmp, labels.size)
    except DataError as exc:
        detail = str(exc).removeprefix(f"{tmp}: ")
        raise DataError(f"{path}: new submission failed its check, previous file kept: {detail}") from exc
    if not np.array_equal(got, labels):
        first = int(np.flatnonzero(got != labels)[0])
        raise DataError(f"{path}: new submission reads back a different label for ImageId {first + 1}, previous kept")


def write_submission(path: str | Path, labels: np.ndarray, *, check: bool = True, n_rows: int | None = None) -> Path:
    """Write ``ImageId,Label`` rows (ids from 1); a previous ``path`` is only ever replaced by a checked file.

    The rows go to a temporary file next to ``path`` (via ``ensemble.io.atomic_write``); with ``check``
    that file must pass ``check_submission`` and read back exactly ``labels`` before ``os.replace`` renames
    it over ``path``. ``n_rows``, when given, is the test-set size the labels must match. On any failure
    the temporary file is removed and ``path`` is left byte-identical.
    """
    path = Path(path)
    labels = _valid_labels(path, labels, n_rows)
    text = _csv_text(labels)
    if not check:
        return atomic_write(path, text)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new.tmp")
    try:
        atomic_write(tmp, text)
        _check_new(tmp, path, labels)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def test_rows(test: str | Path) -> int:
    """Number of rows of a test CSV, or of the test member of a dataset folder or zip."""
    p = Path(test)
    if p.is_file() and not p.name.endswith(".zip"):
        return int(load_test(file_member(p)).shape[0])
    return int(load_test(locate(p).test).shape[0])


def _show(text: str) -> str:
    """A field quoted for a one-line message: control characters escaped, at most 20 characters."""
    return repr(text if len(text) <= 20 else text[:20] + "...")


def _lines(p: Path) -> list[str]:
    """The file's lines without LF/CRLF endings and trailing blank lines."""
    text = p.read_bytes().decode("utf-8-sig", errors="replace")
    if "\r" in text and "\n" not in text:
        raise DataError(f"{p}: uses CR-only line endings; save it with LF or CRLF line endings")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _image_id(p: Path, lineno: int, raw: str, n_rows: int) -> int:
    where = f"{p}: line {lineno}, column 1 'ImageId'"
    if not _ASCII_DIGITS.fullmatch(raw):
        raise DataError(f"{where}: not a plain integer (ASCII digits only): {_show(raw)}")
    digits = raw.lstrip("0")
    if len(digits) > 12 or not 1 <= int(digits or "0") <= n_rows:
        raise DataError(f"{where}: {raw if len(raw) <= 20 else _show(raw)} outside 1-{n_rows}")
    return int(digits)


def _label(p: Path, lineno: int, raw: str) -> int:
    if len(raw) == 1 and raw in _LABEL_DIGITS:
        return int(raw)
    where = f"{p}: line {lineno}, column 2 'Label'"
    if _ASCII_DIGITS.fullmatch(raw) and len(raw) <= 20:
        raise DataError(f"{where}: {raw} outside 0-9")
    raise DataError(f"{where}: not a single digit 0-9: {_show(raw)}")


def check_submission(path: str | Path, n_rows: int = KAGGLE_TEST_ROWS) -> np.ndarray:
    """Validate a submission and return its labels ordered by ImageId.

    Strict: ImageId is plain ASCII digits and Label one digit 0-9 (no decimal point, and no sign, space,
    underscore or non-ASCII digit, which ``int()`` would accept); LF or CRLF line endings.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: missing file")
    lines = _lines(p)
    if not lines or not lines[0].strip():
        raise DataError(f"{p}: file is empty")
    if lines[0].strip() != HEADER:
        raise DataError(f"{p}: line 1: header must be exactly '{HEADER}', found {_show(lines[0].strip())}")
    labels = np.full(n_rows, -1, np.int64)
    seen_at: dict[int, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2:
            raise DataError(f"{p}: line {lineno}: {len(fields)} columns, expected 2 (ImageId,Label)")
        image_id = _image_id(p, lineno, fields[0], n_rows)
        if image_id in seen_at:
            raise DataError(f"{p}: line {lineno}, column 1 'ImageId': {image_id} repeats line {seen_at[image_id]}")
        labels[image_id - 1] = _label(p, lineno, fields[1])
        seen_at[image_id] = lineno
    if len(seen_at) != n_rows:
        missing = np.flatnonzero(labels < 0) + 1
        raise DataError(f"{p}: {n_rows - len(seen_at)} of {n_rows} ImageIds missing (first: {missing[0]})")
    return labels
