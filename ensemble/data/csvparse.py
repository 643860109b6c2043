"""The competition CSV reader: a vectorised NumPy pass over blocks of bytes, exact errors.

When a block does not parse cleanly, a slow, exact pass over that block finds the first bad line
and column for the error message (file, line, column, value). Memory stays near the size of the
parsed arrays, and a file (a small ``.gz`` can expand a thousandfold) may hold at most ``MAX_ROWS`` rows.
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from ensemble.errors import DataError

N_PIXELS = 784
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(N_PIXELS))
TRAIN_COLUMNS = ("label", *PIXEL_COLUMNS)
TEST_COLUMNS = PIXEL_COLUMNS
BLOCK_BYTES = 256 << 10  # small enough that the per-block scratch arrays stay a few MiB
MAX_LINE_BYTES = 64 << 10  # a valid row (785 cells of up to 3 digits) is under 4 KiB
#: Data rows one file may hold (Kaggle's have 42,000 and 28,000): 785 bytes a row as uint8, so at
#: most about 750 MiB for a train file, however far a small ``.gz`` or zip member would expand.
MAX_ROWS = 1_000_000
_PLAIN = re.compile(rb"0|[1-9][0-9]*")  # an integer as Kaggle writes it: no sign, spaces or leading zeros
_NAN_WORDS = {b"nan", b"na", b"n/a", b"null", b"none"}


@dataclass(frozen=True)
class Member:
    """One CSV inside a dataset: a display name and a way to open its bytes."""

    name: str
    open: Callable[[], IO[bytes]]


def _read(stream: IO[bytes], name: str) -> bytes:
    try:
        return stream.read(BLOCK_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{name}: truncated or corrupt compressed data ({exc})") from exc


def _check_tail(tail: bytes, name: str, lineno: int) -> None:
    """Refuse an unfinished line that shows CR-only line endings or exceeds ``MAX_LINE_BYTES``."""
    if b"\r" in tail[:-1]:
        raise DataError(f"{name}: line {lineno}: uses CR-only line endings; save it with LF or CRLF line endings")
    if len(tail) > MAX_LINE_BYTES:
        raise DataError(
            f"{name}: line {lineno}: no line break within {MAX_LINE_BYTES // 1024} KiB "
            f"(a valid row is under 4 KiB); not a Digit Recognizer CSV"
        )


def _blocks(stream: IO[bytes], name: str) -> Iterator[bytes]:
    """Yield chunks of whole lines (each ends with ``\\n``), header included.

    Memory stays within about ``BLOCK_BYTES + MAX_LINE_BYTES``: an unfinished line longer than
    ``MAX_LINE_BYTES`` (a file without newlines) or holding CRs (CR-only line endings) is an error.
    """
    tail = b""
    lines = 0
    while chunk := _read(stream, name):
        buf = tail + chunk if tail else chunk
        cut = buf.rfind(b"\n") + 1
        tail = buf[cut:]
        lines += buf.count(b"\n", 0, cut)
        _check_tail(tail, name, lines + 1)
        if cut:
            yield buf[:cut]
        del buf, chunk
    rest = tail.rstrip(b"\r\n \t")
    if rest:
        _check_tail(rest + b"\n", name, lines + 1)
        yield rest + b"\n"


def _stray_cr(buf: bytes, name: str, first_line: int) -> DataError:
    """A CR left after turning CRLF into LF: CR-only or mixed line endings."""
    lineno = first_line + buf.count(b"\n", 0, buf.index(b"\r"))
    return DataError(
        f"{name}: line {lineno}: carriage return (CR) inside a line (CR-only or mixed line endings); "
        f"save it with LF or CRLF line endings"
    )


def _fast_block(buf: bytes, ncols: int) -> np.ndarray | None:
    """Parse a block of lines of small non-negative integers; None if anything is off."""
    a = np.frombuffer(buf, np.uint8)
    sep = (a == 44) | (a == 10)
    if np.any(~sep & ((a - np.uint8(48)) > 9)):
        return None
    ends = np.flatnonzero(sep)
    rows = ends.size // ncols
    if rows == 0 or ends.size != rows * ncols:
        return None
    kinds = a[ends].reshape(rows, ncols)
    if np.any(kinds[:, -1] != 10) or np.any(kinds[:, :-1] != 44):
        return None
    lens = np.diff(ends, prepend=-1) - 1
    if lens.min() < 1 or lens.max() > 3 or np.any((a[ends - lens] == 48) & (lens > 1)):  # empty, long, "05"
        return None
    v = (a[ends - 1] - np.uint8(48)).astype(np.uint16)
    v += np.where(lens >= 2, (a[ends - 2] - np.uint8(48)).astype(np.uint16) * 10, 0).astype(np.uint16)
    v += np.where(lens >= 3, (a[ends - 3] - np.uint8(48)).astype(np.uint16) * 100, 0).astype(np.uint16)
    return v.reshape(rows, ncols)


def _cell_error(raw: bytes, column: str, limit: int) -> str | None:
    """What is wrong with one cell, or None; a cell is an integer 0..limit written as Kaggle writes it."""
    what = "label" if column == "label" else "pixel"
    s = raw.strip()
    if not s:
        return "empty cell"
    if s.lower() in _NAN_WORDS:
        return f"NaN value '{s.decode(errors='replace')}'"
    if _PLAIN.fullmatch(raw):
        value = int(raw)
        return None if value <= limit else f"{what} value {value} outside 0-{limit}"
    try:
        value = int(s)
    except ValueError:
        text = s.decode(errors="replace")
        try:
            f = float(s)
        except ValueError:
            return f"non-numeric value '{text}'"
        return f"NaN value '{text}'" if f != f else f"non-integer value '{text}'"
    if not 0 <= value <= limit:
        return f"{what} value {value} outside 0-{limit}"
    how = "spaces around it" if s != raw else "a sign" if s[:1] in b"+-" else "a leading zero" if s[:1] == b"0" else ""
    how = f"has {how}" if how else "is not plain decimal digits"
    return f"value '{raw.decode(errors='replace')}' {how}; write {what}s as plain integers 0-{limit}"


def _diagnose(buf: bytes, first_line: int, name: str, header: tuple[str, ...], header_raw: bytes) -> DataError:
    """Find the first bad line of a block the fast path refused."""
    for i, line in enumerate(buf.split(b"\n")[:-1]):
        lineno = first_line + i
        line = line.rstrip(b"\r")
        if line.strip() == header_raw:
            return DataError(f"{name}: line {lineno}: duplicated header row")
        fields = line.split(b",")
        if len(fields) != len(header):
            return DataError(f"{name}: line {lineno}: {len(fields)} columns, expected {len(header)}")
        for j, raw in enumerate(fields):
            col = header[j]
            msg = _cell_error(raw, col, 9 if col == "label" else 255)
            if msg:
                return DataError(f"{name}: line {lineno}, column {j + 1} '{col}': {msg}")
    return DataError(f"{name}: lines {first_line}+: could not parse block")


def _check_header(name: str, line: bytes, expected: tuple[str, ...]) -> None:
    cols = [c.strip().strip('"') for c in line.decode("utf-8-sig", errors="replace").strip().split(",")]
    if tuple(cols) == expected:
        return
    is_test = expected[0] != "label"
    if is_test and cols and cols[0] == "label":
        raise DataError(f"{name}: line 1, column 1: test file has a 'label' column; the test set must be unlabeled")
    if not is_test and tuple(cols) == PIXEL_COLUMNS:
        raise DataError(f"{name}: line 1, column 1: no 'label' column; train must start with 'label'")
    if len(cols) != len(expected):
        raise DataError(
            f"{name}: line 1: header has {len(cols)} columns, expected {len(expected)} "
            f"({expected[0]}, ..., {expected[-1]})"
        )
    j = next(i for i, (a, b) in enumerate(zip(cols, expected)) if a != b)
    raise DataError(f"{name}: line 1, column {j + 1}: expected '{expected[j]}', found '{cols[j]}'")


class _Rows:
    """Parsed rows kept in uint8 arrays grown in place (``realloc``) and trimmed at the end.

    The label column (train) is kept apart from the pixels, so both come out contiguous without a
    copy. They grow by an eighth at a time, never past ``max_rows``: peak memory stays near the result's size.
    """

    def __init__(self, name: str, ncols: int, labeled: bool, max_rows: int) -> None:
        self.name, self.max_rows, self.n = name, max_rows, 0
        self.labels = np.zeros(0, np.uint8) if labeled else None
        self.pixels = np.zeros((0, ncols - 1 if labeled else ncols), np.uint8)

    def add(self, values: np.ndarray, first_line: int) -> None:
        """Append a block of checked values (rows, ncols); DataError past ``max_rows``."""
        need = self.n + values.shape[0]
        if need > self.max_rows:
            raise DataError(
                f"{self.name}: line {first_line + self.max_rows - self.n}: more than {self.max_rows:,} data rows, "
                f"the most one file may have (Kaggle's have 42,000 and 28,000)"
            )
        if need > self.pixels.shape[0]:
            self._grow(min(self.max_rows, max(need, self.pixels.shape[0] * 9 // 8, 1024)))
        if self.labels is None:
            self.pixels[self.n : need] = values
        else:
            self.labels[self.n : need] = values[:, 0]
            self.pixels[self.n : need] = values[:, 1:]
        self.n = need

    def _grow(self, rows: int) -> None:
        self.pixels.resize((rows, self.pixels.shape[1]), refcheck=False)  # no views of these arrays exist
        if self.labels is not None:
            self.labels.resize(rows, refcheck=False)

    def result(self) -> tuple[np.ndarray | None, np.ndarray]:
        self._grow(self.n)
        return self.labels, self.pixels


def _open(member: Member) -> IO[bytes]:
    try:
        return member.open()
    except FileNotFoundError as exc:
        raise DataError(f"{member.name}: missing file") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{member.name}: cannot open ({exc})") from exc


def _lines(stream: IO[bytes], name: str, expected: tuple[str, ...]) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield (block of whole data lines, its first line number, the raw header) after checking the header."""
    header_raw = b""
    next_line = 1
    for buf in _blocks(stream, name):
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
            if b"\r" in buf:
                raise _stray_cr(buf, name, next_line)
        if not header_raw:
            cut = buf.index(b"\n")
            header_raw = buf[:cut].strip()
            if not header_raw:
                raise DataError(f"{name}: file is empty")
            _check_header(name, header_raw, expected)
            buf, next_line = buf[cut + 1 :], 2
            if not buf:
                continue
        yield buf, next_line, header_raw
        next_line += buf.count(b"\n")
    if not header_raw:
        raise DataError(f"{name}: file is empty")


def parse_columns(
    member: Member, expected: tuple[str, ...], *, max_rows: int | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Parse one competition CSV into (label column or None, pixels (rows, 784)), uint8 and contiguous.

    The file is read in blocks: memory stays near the size of the result. A file of more than
    ``max_rows`` data rows (default :data:`MAX_ROWS`) is refused once that many have been read.
    """
    name = member.name
    labeled = expected[0] == "label"
    limits = np.full(len(expected), 255, np.uint16)
    limits[0] = 9 if labeled else 255
    rows = _Rows(name, len(expected), labeled, MAX_ROWS if max_rows is None else max_rows)
    with _open(member) as stream:
        for buf, first_line, header_raw in _lines(stream, name, expected):
            values = _fast_block(buf, len(expected))
            if values is None:
                raise _diagnose(buf, first_line, name, expected, header_raw)
            over = values > limits
            if over.any():
                r, c = np.argwhere(over)[0]
                what = "label" if expected[c] == "label" else "pixel"
                raise DataError(
                    f"{name}: line {first_line + r}, column {c + 1} '{expected[c]}': "
                    f"{what} value {values[r, c]} outside 0-{limits[c]}"
                )
            rows.add(values, first_line)
    if rows.n == 0:
        raise DataError(f"{name}: header only, no data rows")
    return rows.result()


def parse_csv(member: Member, expected: tuple[str, ...], *, max_rows: int | None = None) -> np.ndarray:
    """Parse one competition CSV into a (rows, len(expected)) uint8 array (see :func:`parse_columns`)."""
    labels, pixels = parse_columns(member, expected, max_rows=max_rows)
    return pixels if labels is None else np.column_stack([labels, pixels])
