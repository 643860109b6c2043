"""``ensemble report``: holdout leaderboard, plots, significance test, final submission."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ensemble.cli.data import add_run_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare every model on the holdout, write runs/NAME/report/ and runs/NAME/submission.csv",
        description="Score the best trial of each baseline family, the top CNN trials and the built ensemble "
        "(with and without TTA) on the holdout split; write report.html (self-contained), report.md and "
        "leaderboard.csv under runs/NAME/report/, and the submission of the best model (ties: the cheaper one).",
    )
    add_run_args(p)
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: the run's optuna.journal)")
    p.add_argument("--top-cnn", type=int, default=5, metavar="K", help="CNN trials to list (best by validation, 5)")
    p.add_argument("--gallery", type=int, default=40, metavar="N", help="misclassified digits to show (40)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ensemble.errors import UsageError
    from ensemble.locks import run_lock
    from ensemble.data.runs import check_name, open_run, runs_dir

    if args.top_cnn < 1 or args.gallery < 0:
        raise UsageError("--top-cnn must be >= 1 and --gallery >= 0")
    with run_lock(runs_dir(), check_name(args.run)):  # refused at once while another writer has the run
        run = open_run(args.run, data=args.data)
        print_report(run_report(run, storage_url=args.storage, top_cnn=args.top_cnn, gallery=args.gallery))
    return 0


def run_report(run: Any, *, storage_url: str | None = None, top_cnn: int = 5, gallery: int = 40) -> dict[str, Any]:
    """Make the report (quietly, with matplotlib's Agg backend)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from ensemble.locks import run_lock
    from ensemble.report.summary import make_report
    from ensemble.data.runs import runs_dir, sweep_debris

    with run_lock(runs_dir(), run.name):  # one writer of the report and submission.csv
        sweep_debris(run.root)
        return make_report(run, storage_url=storage_url, top_cnn=top_cnn, gallery=gallery)


SHORT = {
    "rank": "#", "holdout_accuracy": "holdout acc", "ci": "95% CI", "holdout_logloss": "log loss", "ece": "ECE",
    "val_accuracy": "val acc", "fit_seconds": "fit s", "predict_ms_per_1000": "ms/1000", "size_bytes": "size",
}  # fmt: skip


def print_report(result: dict[str, Any]) -> None:
    """The leaderboard as a rich table, the significance test, the final model and the paths written."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ensemble.report.summary import leaderboard_rows
    from ensemble.report.html import HEADERS, fmt

    console = Console(highlight=False)
    if console.width < 150:  # a pipe or a narrow terminal: print the full table rather than squeeze it
        console = Console(highlight=False, width=150)
    rows = leaderboard_rows(result["entries"])
    table = Table(title="Holdout leaderboard", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, (_, key) in enumerate(HEADERS):
        table.add_column(SHORT.get(key, key), justify="left" if 0 < i < 3 else "right", no_wrap=True)
    for r in rows:
        style = "bold green" if r["model"] == result["final"].name else None
        table.add_row(*[fmt(k, r) for _, k in HEADERS], style=style)
    console.print(table)
    if result.get("mcnemar"):
        console.print(result["mcnemar"]["words"], soft_wrap=True)
    for g in result["gains"]:
        gain = "" if g["gain"] is None else f" ({g['gain'] * 100:+.2f} pts)"
        console.print(f"  {g['step']}: holdout {g['holdout_accuracy']:.4f}{gain}", soft_wrap=True)
    final = result["final"]
    if result.get("refit"):
        console.print(f"final refit: {result['refit'].note}", soft_wrap=True)
    console.print(
        f"final model: {final.name} (holdout accuracy {final.metrics['holdout_accuracy']:.4f}) -> "
        f"{result['submission']} (checked: {sum(result['submission_counts']):,} rows)",
        soft_wrap=True,
    )
    for path in result["files"]:
        console.print(f"wrote {path}", soft_wrap=True)
