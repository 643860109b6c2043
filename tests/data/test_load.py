from __future__ import annotations

import gzip
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA, write_dataset

from ensemble.cli import main
from ensemble.data.csvparse import BLOCK_BYTES, MAX_ROWS
from ensemble.data.load import TEST_COLUMNS, TRAIN_COLUMNS, file_member, load_dataset, parse_csv, summarize
from ensemble.errors import DataError


def _edit(name: str, fn: Callable[[list[str]], list[str]]) -> Callable[[Path], Path]:
    def apply(folder: Path) -> Path:
        f = folder / name
        lines = f.read_text().splitlines()
        f.write_text("\n".join(fn(lines)) + ("\n" if fn(lines) else ""))
        return folder

    return apply


def _cell(name: str, line: int, col: int, value: str) -> Callable[[Path], Path]:
    def fn(lines: list[str]) -> list[str]:
        cells = lines[line - 1].split(",")
        cells[col - 1] = value
        lines[line - 1] = ",".join(cells)
        return lines

    return _edit(name, fn)


def _header(name: str, fn: Callable[[list[str]], list[str]]) -> Callable[[Path], Path]:
    def apply(lines: list[str]) -> list[str]:
        return [",".join(fn(lines[0].split(",")))] + lines[1:]

    return _edit(name, apply)


def _swap(cols: list[str]) -> list[str]:
    cols[4], cols[5] = cols[5], cols[4]
    return cols


def _remove(name: str) -> Callable[[Path], Path]:
    def apply(folder: Path) -> Path:
        (folder / name).unlink()
        return folder

    return apply


def _truncate_gz(folder: Path) -> Path:
    write_dataset(folder, gz=True)
    (folder / "train.csv").unlink()
    (folder / "test.csv").unlink()
    raw = (folder / "train.csv.gz").read_bytes()
    (folder / "train.csv.gz").write_bytes(raw[: len(raw) // 2])
    return folder


def _corrupt_zip(folder: Path) -> Path:
    z = folder.parent / "digit-recognizer.zip"
    z.write_bytes(b"PK\x03\x04" + b"garbage" * 100)
    return z


def _zip_without_test(folder: Path) -> Path:
    z = folder.parent / "digit-recognizer.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(folder / "train.csv", "train.csv")
        zf.write(folder / "train.csv", "sample_submission.csv")
    return z


BAD_INPUTS = {
    "missing file": (_remove("test.csv"), r"test\.csv: missing file"),
    "empty file": (_edit("train.csv", lambda lines: []), r"train\.csv: file is empty"),
    "header only": (_edit("train.csv", lambda lines: lines[:1]), r"train\.csv: header only, no data rows"),
    "wrong column count": (_header("train.csv", lambda c: c[:-1]), r"train\.csv: line 1: header has 784 columns"),
    "wrong column name": (_header("train.csv", lambda c: [c[0], "px0", *c[2:]]), r"column 2: expected 'pixel0'"),
    "shuffled pixel order": (_header("train.csv", _swap), r"line 1, column 5: expected 'pixel3', found 'pixel4'"),
    "label in test": (_header("test.csv", lambda c: ["label", *c[1:]]), r"test\.csv: line 1.*'label' column"),
    "no label in train": (_header("train.csv", lambda c: ["pixel0", *c[1:]]), r"train\.csv: line 1.*expected 'label'"),
    "train missing label": (
        _edit("train.csv", lambda ls: [",".join(x.split(",")[1:]) for x in ls]),
        r"train\.csv: line 1, column 1: no 'label' column",
    ),
    "non-numeric": (
        _cell("train.csv", 4, 10, "abc"),
        r"train\.csv: line 4, column 10 'pixel8': non-numeric value 'abc'",
    ),
    "non-integer": (_cell("test.csv", 3, 2, "1.5"), r"test\.csv: line 3, column 2 'pixel1': non-integer value '1\.5'"),
    "NaN": (_cell("train.csv", 5, 3, "NaN"), r"train\.csv: line 5, column 3 'pixel1': NaN value"),
    "empty cell": (_cell("train.csv", 6, 7, ""), r"train\.csv: line 6, column 7 'pixel5': empty cell"),
    "pixel too big": (
        _cell("train.csv", 2, 100, "256"),
        r"line 2, column 100 'pixel98': pixel value 256 outside 0-255",
    ),
    "pixel negative": (
        _cell("test.csv", 7, 5, "-1"),
        r"test\.csv: line 7, column 5 'pixel4': pixel value -1 outside 0-255",
    ),
    "leading zero": (
        _cell("train.csv", 3, 39, "0255"),
        r"train\.csv: line 3, column 39 'pixel37': value '0255' has a leading zero; "
        r"write pixels as plain integers 0-255$",
    ),
    "short leading zero": (
        _cell("test.csv", 4, 1, "05"),
        r"test\.csv: line 4, column 1 'pixel0': value '05' has a leading zero",
    ),
    "leading zero label": (
        _cell("train.csv", 2, 1, "07"),
        r"line 2, column 1 'label': value '07' has a leading zero; write labels as plain integers 0-9$",
    ),
    "plus sign": (_cell("train.csv", 5, 39, "+5"), r"train\.csv: line 5, column 39 'pixel37': value '\+5' has a sign;"),
    "minus zero": (_cell("test.csv", 2, 9, "-0"), r"test\.csv: line 2, column 9 'pixel8': value '-0' has a sign;"),
    "leading space": (
        _cell("train.csv", 6, 39, " 5"),
        r"train\.csv: line 6, column 39 'pixel37': value ' 5' has spaces around it;",
    ),
    "trailing space": (
        _cell("test.csv", 3, 784, "5 "),
        r"test\.csv: line 3, column 784 'pixel783': value '5 ' has spaces around it;",
    ),
    "underscore": (
        _cell("train.csv", 7, 2, "1_0"),
        r"line 7, column 2 'pixel0': value '1_0' is not plain decimal digits;",
    ),
    "spaced and out of range": (
        _cell("train.csv", 8, 3, " 256"),
        r"line 8, column 3 'pixel1': pixel value 256 outside 0-255$",
    ),
    "label out of range": (
        _cell("train.csv", 9, 1, "10"),
        r"train\.csv: line 9, column 1 'label': label value 10 outside 0-9",
    ),
    "short row": (_edit("train.csv", lambda ls: [*ls[:2], ls[2].rsplit(",", 1)[0], *ls[3:]]), r"line 3: 784 columns"),
    "duplicated header": (_edit("train.csv", lambda ls: [ls[0], *ls]), r"train\.csv: line 2: duplicated header row"),
    "truncated gz": (_truncate_gz, r"train\.csv\.gz: truncated or corrupt compressed data"),
    "corrupt zip": (_corrupt_zip, r"digit-recognizer\.zip: corrupt zip"),
    "zip without test": (_zip_without_test, r"digit-recognizer\.zip: zip has no 'test\.csv' member"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_data_error(case: str, dataset: Path) -> None:
    breaker, pattern = BAD_INPUTS[case]
    path = breaker(dataset)
    with pytest.raises(DataError, match=pattern):
        load_dataset(path)


@pytest.mark.parametrize(
    "case", ["non-numeric", "truncated gz", "corrupt zip", "leading zero", "plus sign", "leading space"]
)
def test_cli_shows_one_line_and_exit_2(case: str, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    breaker, pattern = BAD_INPUTS[case]
    path = breaker(dataset)
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_debug_shows_traceback(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    BAD_INPUTS["non-numeric"][0](dataset)
    assert main(["--debug", "data", "check", str(dataset)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_all_forms_load_identically(tmp_path: Path) -> None:
    plain = load_dataset(write_dataset(tmp_path / "plain"))
    gz = load_dataset(write_dataset(tmp_path / "gz", gz=True))
    z = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("train.csv", "test.csv"):
            zf.write(tmp_path / "plain" / name, name)
    zipped = load_dataset(z)
    in_dir = tmp_path / "kaggle"
    in_dir.mkdir()
    (in_dir / "digit-recognizer.zip").write_bytes(z.read_bytes())
    assert plain.fingerprint == gz.fingerprint == zipped.fingerprint == load_dataset(in_dir).fingerprint
    assert plain.x_train.shape == (60, 28, 28) and plain.x_train.dtype == np.uint8
    assert plain.x_test.shape == (20, 28, 28)


def test_round_trip_values(tmp_path: Path) -> None:
    from conftest import synthetic_digits

    folder = write_dataset(tmp_path / "d", n_train=60, n_test=20, seed=3)
    x, y = synthetic_digits(80, seed=3)
    ds = load_dataset(folder)
    np.testing.assert_array_equal(ds.x_train, x[:60])
    np.testing.assert_array_equal(ds.y_train, y[:60])
    np.testing.assert_array_equal(ds.x_test, x[60:])


def test_crlf_and_no_final_newline(dataset: Path) -> None:
    ref = load_dataset(dataset)
    for name in ("train.csv", "test.csv"):
        f = dataset / name
        f.write_bytes(f.read_bytes().rstrip(b"\n").replace(b"\n", b"\r\n"))
    assert load_dataset(dataset).fingerprint == ref.fingerprint


def test_gzip_stream_larger_than_one_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.BLOCK_BYTES", 4096)
    folder = write_dataset(tmp_path / "d", n_train=200, n_test=30, gz=True)
    ds = load_dataset(folder)
    assert ds.x_train.shape == (200, 28, 28)
    with gzip.open(folder / "train.csv.gz", "rt") as fh:
        assert sum(1 for _ in fh) == 201


def test_error_line_numbers_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.BLOCK_BYTES", 4096)
    folder = write_dataset(tmp_path / "d", n_train=200)
    _cell("train.csv", 150, 20, "x")(folder)
    with pytest.raises(DataError, match=r"line 150, column 20 'pixel18'"):
        load_dataset(folder)


def test_summary_and_cli_check(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = summarize(load_dataset(dataset))
    assert s["train_rows"] == 60 and s["test_rows"] == 20
    assert sum(s["label_counts"].values()) == 60
    assert main(["data", "check", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "train rows   60" in out and f"fingerprint  {s['fingerprint']}" in out


def test_demo_dataset_is_real_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "demo", "--out", str(tmp_path / "demo")]) == 0
    ds = load_dataset(tmp_path / "demo")
    assert ds.x_train.shape == (4000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert np.bincount(ds.y_train, minlength=10).min() > 300
    assert ds.x_train.max() == 255 and (ds.x_train > 0).mean() > 0.1
    assert (tmp_path / "demo" / "sample_submission.csv").read_text().startswith("ImageId,Label\n1,0\n")


@pytest.mark.skipif(not REAL_DATA.exists(), reason="real Kaggle data not present in ../shared")
def test_real_kaggle_files() -> None:
    ds = load_dataset(REAL_DATA)
    assert ds.x_train.shape == (42_000, 28, 28)
    assert ds.x_test.shape == (28_000, 28, 28)
    counts = np.bincount(ds.y_train, minlength=10)
    assert counts[1] == 4684 and counts.sum() == 42_000


# ------------------------------------------- no newline, CR-only endings: fast, bounded, one line


def _no_newline(path: Path, mib: int) -> Path:
    """``mib`` MiB of ``0,0,0,...`` without a single line break, plain or gzipped (fast to make)."""
    unit = b"0," * (1 << 19)
    if path.suffix != ".gz":
        with path.open("wb") as fh:
            for _ in range(mib):
                fh.write(unit)
        return path
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("wb") as fh:
        for _ in range(mib):
            fh.write(packer.compress(unit))
        fh.write(packer.flush())
    return path


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_no_newline_fails_fast_with_bounded_memory(name: str, tmp_path: Path) -> None:
    path = _no_newline(tmp_path / name, 50)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DataError) as err:
            parse_csv(file_member(path), TRAIN_COLUMNS)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 1: no line break within 64 KiB") and "\n" not in msg
    assert seconds < 1.0
    assert peak < 4 * BLOCK_BYTES, f"peak {peak / 2**20:.1f} MiB for a 50 MiB input"


def _rows(n: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    head = ",".join(TRAIN_COLUMNS).encode()
    return [head] + [",".join(map(str, r)).encode() for r in rng.integers(0, 10, (n, 785)).tolist()]


CR_CASES = {
    "CR-only, small": (
        lambda ls: b"\r".join(ls) + b"\r",
        r"line 1: uses CR-only line endings; save it with LF or CRLF",
    ),
    "CR-only, no final CR": (lambda ls: b"\r".join(ls), r"line 1: uses CR-only line endings"),
    "CR-only, over a block": (lambda ls: b"\r".join(ls * 4), r"line 1: uses CR-only line endings"),
    "one CR-only line": (
        lambda ls: b"\n".join(ls[:3]) + b"\n" + b"\r".join(ls[3:5]) + b"\n" + b"\n".join(ls[5:]) + b"\n",
        r"line 4: carriage return \(CR\) inside a line .*save it with LF or CRLF line endings",
    ),
}


@pytest.mark.parametrize("case", list(CR_CASES))
def test_cr_only_line_endings_are_a_data_error(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.BLOCK_BYTES", 16 << 10)
    make, pattern = CR_CASES[case]
    path = tmp_path / "train.csv"
    path.write_bytes(make(_rows(12)))
    with pytest.raises(DataError, match=pattern) as err:
        parse_csv(file_member(path), TRAIN_COLUMNS)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value) and "\r" not in str(err.value)


@pytest.mark.parametrize("block", [4096, 4097, 5003, 2 << 20])
@pytest.mark.parametrize("gz", [False, True])
def test_crlf_still_parses_across_block_boundaries(
    block: int, gz: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.BLOCK_BYTES", block)
    lines = _rows(40)
    lf, crlf = b"\n".join(lines) + b"\n", b"\r\n".join(lines) + b"\r\n"
    paths = []
    for stem, data in (("lf", lf), ("crlf", crlf)):
        path = tmp_path / (f"{stem}.csv.gz" if gz else f"{stem}.csv")
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    ref, got = (parse_csv(file_member(p), TRAIN_COLUMNS) for p in paths)
    assert got.shape == (40, 785)
    np.testing.assert_array_equal(got, ref)


def test_long_line_after_good_rows_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.BLOCK_BYTES", 16 << 10)
    path = tmp_path / "train.csv"
    path.write_bytes(b"\n".join(_rows(5)) + b"\n" + b"1," * (200 << 10))
    with pytest.raises(DataError, match=r"train\.csv: line 7: no line break within 64 KiB"):
        parse_csv(file_member(path), TRAIN_COLUMNS)


# ------------------------------------------- compressed bombs: a row cap, memory near the array's size


def _gz_bomb(path: Path, rows: int, *, header: tuple[str, ...] = TEST_COLUMNS, chunk: int = 10_000) -> Path:
    """A small gzip of ``rows`` all-zero rows: one member compressed once and repeated (gzip allows many)."""
    line = b",".join([b"0"] * len(header)) + b"\n"
    member = gzip.compress(line * chunk, 9)
    with path.open("wb") as fh:
        fh.write(gzip.compress(",".join(header).encode() + b"\n"))
        for _ in range(rows // chunk):
            fh.write(member)
        fh.write(gzip.compress(line * (rows % chunk)))
    return path


def _bomb_in_folder(folder: Path) -> Path:
    write_dataset(folder, gz=True)
    _gz_bomb(folder / "test.csv.gz", 3_000_000)
    return folder / "test.csv.gz"


def _bomb_in_zip(folder: Path) -> Path:
    write_dataset(folder)
    z = folder.parent / "digit-recognizer.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "train.csv", "train.csv")
        zf.write(_gz_bomb(folder.parent / "test.csv.gz", 3_000_000), "test.csv.gz")
    return z


def _rows_in_zip(folder: Path) -> Path:
    write_dataset(folder, n_train=1001)
    z = folder.parent / "digit-recognizer.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "train.csv", "train.csv")
        zf.write(folder / "test.csv", "test.csv")
    return z


@pytest.mark.parametrize(
    "make, shown, line",
    [
        (_bomb_in_folder, "{path}", 1002),
        (_bomb_in_zip, "{path}:test.csv.gz", 1002),
        (_rows_in_zip, "{path}:train.csv", 1002),
    ],
)
def test_a_file_over_the_row_cap_is_one_line_and_exit_2(
    make: Callable[[Path], Path], shown: str, line: int, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("ensemble.data.csvparse.MAX_ROWS", 1000)
    path = make(tmp_path / "data")
    assert path.stat().st_size < 16 << 20  # small on disk: 3 million rows expand to 4.7 GB
    target = path if path.suffix == ".zip" else path.parent
    assert main(["data", "check", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {shown.format(path=path)}: line {line}: more than 1,000 data rows, "
        f"the most one file may have (Kaggle's have 42,000 and 28,000)\n"
    )


def test_at_the_row_cap_still_loads(tmp_path: Path) -> None:
    path = _gz_bomb(tmp_path / "test.csv.gz", 1000, chunk=300)
    pixels = parse_csv(file_member(path), TEST_COLUMNS, max_rows=1000)
    assert pixels.shape == (1000, 784) and not pixels.any()
    with pytest.raises(DataError, match=r"test\.csv\.gz: line 1001: more than 999 data rows"):
        parse_csv(file_member(path), TEST_COLUMNS, max_rows=999)


PEAK_RSS = """
import re, sys
from pathlib import Path
from ensemble.data.load import file_member, load_test
from ensemble.errors import DataError

def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

path = Path(sys.argv[1])
load_test(file_member(path.parent / "small.csv.gz"))  # warm up: imports, allocator
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the resident size now
before = kib("VmRSS")
try:
    print(load_test(file_member(path)).nbytes, end="|")
except DataError as exc:
    print(exc, end="|")
print((kib("VmHWM") - before) * 1024)
"""


def _peak_rss(path: Path) -> tuple[str, int]:
    """(array size or error, peak resident memory above the size before) of loading ``path`` in a fresh process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    _gz_bomb(path.parent / "small.csv.gz", 10)
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, check=True)
    what, peak = out.stdout.rsplit("|", 1)
    return what, int(peak)


def test_loading_peaks_near_the_arrays_size(tmp_path: Path) -> None:
    nbytes, peak = _peak_rss(_gz_bomb(tmp_path / "test.csv.gz", 20_000))
    assert int(nbytes) == 20_000 * 784
    assert peak < 1.5 * int(nbytes), f"peak RSS {peak / 2**20:.1f} MiB for a {int(nbytes) / 2**20:.1f} MiB array"


@pytest.mark.slow
def test_the_default_row_cap_stops_a_bomb_with_memory_near_the_caps_array(tmp_path: Path) -> None:
    """3 million rows (4.7 GB of text) in a 4 MB gzip: refused at MAX_ROWS, the peak near MAX_ROWS rows."""
    path = _gz_bomb(tmp_path / "test.csv.gz", 3_000_000)
    message, peak = _peak_rss(path)
    assert message == (
        f"{path}: line {MAX_ROWS + 2}: more than {MAX_ROWS:,} data rows, "
        f"the most one file may have (Kaggle's have 42,000 and 28,000)"
    )
    cap_array = MAX_ROWS * 784
    assert peak < 1.2 * cap_array, f"peak RSS {peak / 2**20:.0f} MiB, {MAX_ROWS:,} rows are {cap_array / 2**20:.0f} MiB"


def test_one_enormous_line_in_a_zip_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    folder = write_dataset(tmp_path / "data")
    z = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder / "train.csv", "train.csv")
        zf.write(_no_newline(tmp_path / "huge.csv", 16), "test.csv")
    assert main(["data", "check", str(z)]) == 2
    assert capsys.readouterr().err == (
        f"error: {z}:test.csv: line 1: no line break within 64 KiB (a valid row is under 4 KiB); "
        f"not a Digit Recognizer CSV\n"
    )
