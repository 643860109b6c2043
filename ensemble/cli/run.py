"""``ensemble run``: the whole job, from data to a compared, explained submission."""

from __future__ import annotations

import argparse
import time

from ensemble.cli.common import add_artifacts_arg, add_devices_arg, add_storage_arg
from ensemble.cli.search import BACKENDS
from ensemble.durations import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    from ensemble.pipeline.presets import PRESETS, describe_presets

    p = sub.add_parser(
        "run",
        help="the whole pipeline: data check+split, baselines alongside the CNN search, ensemble, report, submission",
        description="Data check and split -> classical baselines (child process) alongside the CNN Optuna study -> "
        "soft-voting ensemble with TTA -> holdout report -> runs/NAME/submission.csv. Stage completion is "
        "recorded in runs/NAME/stages.json: re-running the same command continues where it stopped. "
        f"Presets: {describe_presets()}.",
    )
    p.add_argument(
        "--run",
        "--name",
        dest="name",
        default="main",
        metavar="NAME",
        help="run folder runs/NAME (default: main); --name is the same option",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="Kaggle data: a folder with train.csv/test.csv (.gz ok) or digit-recognizer.zip "
        "(default: ./data/digit-recognizer, else the offline demo digits)",
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick", help="default: quick (sized for a 2-core CPU)")
    p.add_argument(
        "--time-budget",
        type=parse_duration,
        metavar="DURATION",
        help="global time budget of the whole run, e.g. 28m, 2h (default: the preset's, in proportion for "
        "fewer than 42,000 labeled digits, at least 2 minutes)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="delete the run folder runs/NAME (and, with --storage, the run's studies there) and start over",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend of every stage (default: $KERAS_BACKEND, else the first installed of tensorflow, "
        "jax, torch)",
    )
    add_devices_arg(p, default=None)
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=argparse.SUPPRESS)  # preset overrides
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ensemble.api import fit
    from ensemble.pipeline.presets import parse_overrides

    t0 = time.time()
    result = fit(
        args.data,
        run=args.name,
        preset=args.preset,
        time_budget=args.time_budget,
        backend=args.backend,
        storage=args.storage,
        restart=args.restart,
        settings={**parse_overrides(args.set), **({"devices": args.devices} if args.devices else {})},
    )
    print(
        f"done in {time.time() - t0:.0f}s: final model {result.final_model} "
        f"(holdout accuracy {result.holdout_accuracy:.4f}); submission {result.submission}"
    )
    if result.competition_shaped:
        print(
            f"submit:  kaggle competitions submit -c digit-recognizer -f {result.submission} "
            f'-m "ensemble run {args.name}"'
        )
    return 0
