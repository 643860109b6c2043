from __future__ import annotations

import pytest

from ensemble.durations import parse_duration
from ensemble.errors import UsageError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("45", 45), ("1.5h", 5400)])
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "0s", "-5m", "5 minutes", "1m30"])
def test_bad(text: str) -> None:
    with pytest.raises(UsageError, match=r"--timeout: cannot read duration"):
        parse_duration(text)
