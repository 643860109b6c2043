"""``ensemble submission check``."""

from __future__ import annotations

import argparse

import numpy as np

from ensemble.report.submission import KAGGLE_TEST_ROWS, check_submission, test_rows


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("submission", help="check a Kaggle submission file")
    ssub = s.add_subparsers(dest="submission_command", metavar="ACTION", required=True)
    p = ssub.add_parser(
        "check", help="verify header ImageId,Label, ids 1..N once each (plain ASCII digits), Label one digit 0-9"
    )
    p.add_argument("file", metavar="FILE", help="submission CSV")
    p.add_argument(
        "--test",
        metavar="TEST",
        help=f"test CSV or dataset folder/zip giving N (default N = {KAGGLE_TEST_ROWS:,})",
    )
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    n = test_rows(args.test) if args.test else KAGGLE_TEST_ROWS
    labels = check_submission(args.file, n)
    counts = " ".join(f"{k}:{v}" for k, v in enumerate(np.bincount(labels, minlength=10)))
    print(f"{args.file}: OK, {n:,} rows; predicted labels {counts}")
    return 0
