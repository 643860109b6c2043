from __future__ import annotations

from ensemble.errors import one_line


def test_one_line_joins_lines_and_cuts_long_messages() -> None:
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError("x" * 500), 20) == "x" * 17 + "..."
    assert one_line(ValueError("x" * 500), None) == "x" * 500
    assert one_line(KeyError()) == "KeyError"  # an empty message names the exception
    assert one_line("") == ""


def test_one_line_typed_names_the_exception_first() -> None:
    assert one_line(OSError("disk\nfull"), typed=True) == "OSError: disk full"
