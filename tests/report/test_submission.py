from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble.cli import main
from ensemble.errors import DataError
from ensemble.report.submission import check_submission, write_submission


def test_round_trip(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 50)
    write_submission(tmp_path / "s.csv", labels)
    np.testing.assert_array_equal(check_submission(tmp_path / "s.csv", 50), labels)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writer_is_atomic_on_bad_labels(tmp_path: Path) -> None:
    write_submission(tmp_path / "s.csv", np.zeros(5, int))
    with pytest.raises(DataError, match="labels must be in 0-9"):
        write_submission(tmp_path / "s.csv", np.array([1, 2, 11]))
    assert check_submission(tmp_path / "s.csv", 5).tolist() == [0] * 5


def test_crlf_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_bytes(b"ImageId,Label\r\n1,3\r\n2,4\r\n")
    assert check_submission(f, 2).tolist() == [3, 4]


BAD = {
    "header": ("imageid,label\n1,0\n2,0\n", r"line 1: header must be exactly 'ImageId,Label'"),
    "missing id": ("ImageId,Label\n1,0\n", r"1 of 2 ImageIds missing \(first: 2\)"),
    "duplicate id": ("ImageId,Label\n1,0\n1,0\n", r"line 3, column 1 'ImageId': 1 repeats line 2"),
    "id out of range": ("ImageId,Label\n1,0\n3,0\n", r"line 3, column 1 'ImageId': 3 outside 1-2"),
    "label out of range": ("ImageId,Label\n1,0\n2,10\n", r"line 3, column 2 'Label': 10 outside 0-9"),
    "label not int": ("ImageId,Label\n1,0\n2,1.5\n", r"line 3, column 2 'Label': not a single digit 0-9: '1.5'"),
    "extra column": ("ImageId,Label\n1,0,0\n2,0\n", r"line 2: 3 columns, expected 2"),
    "empty": ("", r"file is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_submissions(case: str, tmp_path: Path) -> None:
    text, pattern = BAD[case]
    f = tmp_path / "s.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=pattern):
        check_submission(f, 2)


def test_cli_check_uses_test_rows(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_submission(tmp_path / "s.csv", np.ones(20, int))
    assert main(["submission", "check", str(tmp_path / "s.csv"), "--test", str(dataset)]) == 0
    assert "OK, 20 rows" in capsys.readouterr().out
    assert main(["submission", "check", str(tmp_path / "s.csv"), "--test", str(dataset / "test.csv")]) == 0
    assert main(["submission", "check", str(tmp_path / "s.csv")]) == 2
    assert "27980 of 28000 ImageIds missing" in capsys.readouterr().err


LOOSE_LABELS = {
    "+3": r"not a single digit 0-9: '\+3'",
    "-1": r"not a single digit 0-9: '-1'",
    "1_0": r"not a single digit 0-9: '1_0'",
    " 3": r"not a single digit 0-9: ' 3'",
    "3 ": r"not a single digit 0-9: '3 '",
    "3.0": r"not a single digit 0-9: '3\.0'",
    "10": r"10 outside 0-9",
    "03": r"03 outside 0-9",
    "\u0663": r"not a single digit 0-9: '\u0663'",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
    "\uff13": r"not a single digit 0-9: '\uff13'",  # FULLWIDTH DIGIT THREE
    "": r"not a single digit 0-9: ''",
}


@pytest.mark.parametrize("label", list(LOOSE_LABELS))
def test_label_must_be_one_ascii_digit(label: str, tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text(f"ImageId,Label\n1,4\n2,{label}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f}: line 3, column 2 'Label': {LOOSE_LABELS[label]}$") as err:
        check_submission(f, 2)
    assert "\n" not in str(err.value)


LOOSE_IDS = {
    "+2": r"not a plain integer \(ASCII digits only\): '\+2'",
    "-2": r"not a plain integer \(ASCII digits only\): '-2'",
    "0_2": r"not a plain integer \(ASCII digits only\): '0_2'",
    " 2": r"not a plain integer \(ASCII digits only\): ' 2'",
    "2.0": r"not a plain integer \(ASCII digits only\): '2\.0'",
    "\u0662": r"not a plain integer \(ASCII digits only\): '\u0662'",
    "": r"not a plain integer \(ASCII digits only\): ''",
    "0": r"0 outside 1-2",
    "9" * 5000: r"'9{20}\.\.\.' outside 1-2",
}


@pytest.mark.parametrize("image_id", list(LOOSE_IDS), ids=lambda v: v[:8] or "empty")
def test_image_id_must_be_plain_ascii_digits(image_id: str, tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text(f"ImageId,Label\n1,4\n{image_id},5\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f}: line 3, column 1 'ImageId': {LOOSE_IDS[image_id]}$"):
        check_submission(f, 2)


def test_leading_zeros_in_image_id_are_plain_digits(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("ImageId,Label\n01,4\n002,5\n")
    assert check_submission(f, 2).tolist() == [4, 5]


def test_cr_only_submission_is_named(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_bytes(b"ImageId,Label\r1,3\r2,4\r")
    with pytest.raises(DataError, match=rf"^{f}: uses CR-only line endings; save it with LF or CRLF line endings$"):
        check_submission(f, 2)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "s.csv")


@pytest.mark.parametrize(
    ("labels", "n_rows", "pattern"),
    [
        (np.array([1, 2, 11]), None, r"labels must be in 0-9"),
        (np.array([1.0, 2.0]), None, r"labels must be integers 0-9, got dtype float64"),
        (np.ones(4, int), 5, r"4 labels for a test set of 5 rows"),
        (np.ones((2, 2), int), None, r"need a non-empty 1-D array"),
    ],
    ids=["out of range", "floats", "wrong row count", "2-D"],
)
def test_refused_labels_leave_the_old_file(
    labels: np.ndarray, n_rows: int | None, pattern: str, tmp_path: Path
) -> None:
    write_submission(tmp_path / "s.csv", np.arange(5) % 10)
    before = (tmp_path / "s.csv").read_bytes()
    with pytest.raises(DataError, match=pattern):
        write_submission(tmp_path / "s.csv", labels, n_rows=n_rows)
    assert (tmp_path / "s.csv").read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (lambda text: text.rsplit("\n", 2)[0] + "\n", r"failed its check, previous file kept: 1 of 5 ImageIds missing"),
        (lambda text: text.replace("\n3,", "\n3, "), r"failed its check, previous file kept: line 4, column 2 'Label'"),
        (lambda text: text.replace("\n3,2", "\n3,7"), r"reads back a different label for ImageId 3, previous kept"),
    ],
    ids=["row dropped", "space in label", "label changed"],
)
def test_failed_check_leaves_old_file_byte_identical(
    corrupt, pattern: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ensemble.report import submission

    write_submission(tmp_path / "s.csv", np.array([9, 8, 7, 6, 5]))
    before = (tmp_path / "s.csv").read_bytes()
    writer = submission._csv_text
    monkeypatch.setattr(submission, "_csv_text", lambda labels: corrupt(writer(labels)))
    with pytest.raises(DataError, match=rf"^{tmp_path / 's.csv'}: .*{pattern}") as err:
        write_submission(tmp_path / "s.csv", np.array([0, 1, 2, 3, 4]))
    assert ".tmp" not in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "s.csv").read_bytes() == before and _leftovers(tmp_path) == []


def test_unchecked_write_and_new_file(tmp_path: Path) -> None:
    write_submission(tmp_path / "a" / "s.csv", np.array([3, 1]), check=False)
    write_submission(tmp_path / "b" / "s.csv", np.array([3, 1]), n_rows=2)
    for folder in ("a", "b"):
        assert (tmp_path / folder / "s.csv").read_text() == "ImageId,Label\n1,3\n2,1\n"
        assert _leftovers(tmp_path / folder) == []


@pytest.mark.parametrize("label", ["+3", "1_0", " 3"])
def test_cli_rejects_loose_labels_in_one_line(label: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.csv"
    f.write_text(f"ImageId,Label\n1,{label}\n")
    assert main(["submission", "check", str(f), "--test", str(_one_row_test(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{f}: line 2, column 2 'Label': not a single digit 0-9" in err


def _one_row_test(folder: Path) -> Path:
    from ensemble.data.load import PIXEL_COLUMNS

    test = folder / "test.csv"
    test.write_text(",".join(PIXEL_COLUMNS) + "\n" + ",".join(["0"] * 784) + "\n")
    return test
