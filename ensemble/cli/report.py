"""``ensemble report``: holdout leaderboard, plots, significance test, final submission."""

from __future__ import annotations

import argparse

from ensemble.cli.common import add_artifacts_arg, add_run_args, add_storage_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare every model on the holdout, write runs/NAME/report/ and runs/NAME/submission.csv",
        description="Score the best trial of each baseline family, the top CNN trials and the built ensemble "
        "(with and without TTA) on the holdout split; write report.html (self-contained), report.md and "
        "leaderboard.csv under runs/NAME/report/, and the submission of the best model (ties: the cheaper one).",
    )
    add_run_args(p)
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument("--top-cnn", type=int, default=5, metavar="K", help="CNN trials to list (best by validation, 5)")
    p.add_argument("--gallery", type=int, default=40, metavar="N", help="misclassified digits to show (40)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ensemble.data.runs import check_name, open_run, runs_dir
    from ensemble.errors import UsageError
    from ensemble.locks import run_lock
    from ensemble.report.console import print_report
    from ensemble.report.make import run_report

    if args.top_cnn < 1 or args.gallery < 0:
        raise UsageError("--top-cnn must be >= 1 and --gallery >= 0")
    with run_lock(runs_dir(), check_name(args.run)):  # refused at once while another writer has the run
        run = open_run(args.run, data=args.data)
        print_report(run_report(run, storage_url=args.storage, top_cnn=args.top_cnn, gallery=args.gallery))
    return 0
