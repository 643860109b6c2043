from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble.cli import main
from ensemble.errors import DataError
from ensemble.submission import check_submission, write_submission


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
    "label not int": ("ImageId,Label\n1,0\n2,1.5\n", r"line 3, column 2 'Label': not an integer: '1.5'"),
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
