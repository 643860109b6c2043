"""Arguments that several commands share, declared once."""

from __future__ import annotations

import argparse
import os

from ensemble.search.artifacts import ARTIFACTS_ENV
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
        help="Optuna storage URL, e.g. postgresql://user:PASSWORD@host/db, or grpc://HOST:PORT for an "
        f"ensemble storage-proxy (default: ${STORAGE_ENV} if set, "
        "else the journal file runs/NAME/optuna.journal)",
    )


def add_jobs_arg(p: argparse.ArgumentParser) -> None:
    """``--jobs N|auto``: CNN trials at once (``ensemble search``, ``ensemble worker``)."""
    p.add_argument(
        "--jobs",
        default="1",
        metavar="N",
        help="trials at once per device, each in its own trainer process (default 1); auto: ramp up while it "
        "trains faster",
    )


def add_devices_arg(p: argparse.ArgumentParser, default: str | None = "all") -> None:
    """``--devices all|cpu|0,1,...``: the devices the CNN trainers use (``ensemble run``, ``search``, ``worker``)."""
    p.add_argument(
        "--devices",
        default=default,
        metavar="LIST",
        help="devices of the CNN trainers: all (every GPU found through CUDA_VISIBLE_DEVICES, nvidia-smi -L or "
        "the backend; the CPU when none), cpu, or GPU ids such as 0,1 (default: all); each device gets its "
        "own trainers (trials_per_device of them)",
    )


class _ToEnvironment(argparse.Action):
    """Store the value, and put it in the environment too, so child processes (trials, baselines) use it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        os.environ[ARTIFACTS_ENV] = str(values)


def add_artifacts_arg(p: argparse.ArgumentParser) -> None:
    """``--artifacts PATH``: Optuna's artifact store for the trials' files (default ``$ENSEMBLE_ARTIFACTS``)."""
    p.add_argument(
        "--artifacts",
        metavar="PATH",
        action=_ToEnvironment,
        default=os.environ.get(ARTIFACTS_ENV) or None,
        help=f"artifact store for every trial's files, a folder on a shared mount or s3://BUCKET, so other "
        f"machines can build from them (default: ${ARTIFACTS_ENV} if set, else none: the files stay in runs/NAME)",
    )
