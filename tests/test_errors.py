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


def test_the_interrupted_line_says_how_to_resume_without_restart_or_password() -> None:
    from ensemble.cli import interrupted_line

    argv = ["run", "--name", "r", "--restart", "--storage", "postgresql://al:s3cret@db/x"]
    line = interrupted_line("run", argv, "trial 3 will run again")
    resume = "ensemble run --name r --storage 'postgresql://al:***@db/x'"  # never --restart: it would start over
    assert line == f"interrupted: trial 3 will run again; resume with: {resume}"
    eq = interrupted_line("search", ["search", "--storage=postgresql://al@db/x?password=s3cret"])
    assert eq == "interrupted; resume with: ensemble search '--storage=postgresql://al@db/x?password=***'"
    assert interrupted_line("data", ["data", "--run", "r"]) == "interrupted"
