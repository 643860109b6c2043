"""Arguments that several commands share, declared once."""

from __future__ import annotations

import argparse
import os

from ensemble.search.storage import STORAGE_ENV


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options every stage command shares: the run and where its data comes from."""
    p.add_argument("--run", required=True, metavar="NAME", help="run folder runs/NAME (created if missing)")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="Kaggle data: a folder with train.csv/test.csv (.gz ok) or digit-recognizer.zip "
        "(default: ./data/digit-recognizer, else the offline demo digits)",
    )


def add_storage_arg(p: argparse.ArgumentParser) -> None:
    """``--storage URL``, by default ``$ENSEMBLE_STORAGE`` (so a password need not be on the command line)."""
    p.add_argument(
        "--storage",
        metavar="URL",
        default=os.environ.get(STORAGE_ENV) or None,
        help=f"Optuna storage URL, e.g. postgresql://user:PASSWORD@host/db (default: ${STORAGE_ENV} if set, "
        "else the journal file runs/NAME/optuna.journal)",
    )
