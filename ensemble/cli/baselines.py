"""``ensemble baselines``: tune classical models (scikit-learn + XGBoost) as Optuna studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from ensemble.cli.common import add_artifacts_arg, add_run_args, add_storage_arg
from ensemble.durations import parse_duration
from ensemble.search.baselines.models import FAMILIES

DEFAULT_TRIALS = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baselines",
        help="tune classical baselines (logreg, rf, extratrees, knn, svm, xgboost) as Optuna studies",
        description="One Optuna study 'baseline-FAMILY' per model family in the run's storage; re-running "
        "continues the studies. Search trials fit on 'search_rows' training rows (see the shipped FAMILY.yaml spaces), "
        "then the best configuration is refitted on the whole training part as one more trial.",
    )
    add_run_args(p)
    p.add_argument("--models", metavar="LIST", help=f"comma list of families (default: all = {','.join(FAMILIES)})")
    p.add_argument(
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        metavar="N",
        help=f"search trials per family in this invocation, plus one refit of the best (default {DEFAULT_TRIALS})",
    )
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        help="start no new search trial after this long, e.g. 90s, 10m, 1h (refits of the best still run)",
    )
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument("--jobs", type=int, metavar="N", help="parallel worker processes (default: number of CPU cores)")
    p.add_argument(
        "--spaces",
        metavar="DIR",
        help="folder with your FAMILY.yaml search spaces (default: the ones shipped with the package; "
        "a search_spaces/ folder in the current folder is not used unless given here)",
    )
    p.add_argument("--no-refit", action="store_true", help="skip refitting the best search trial on all training rows")
    p.add_argument("--seed", type=int, default=0, help="sampler and model seed (default 0)")
    p.set_defaults(func=cmd_baselines)


def cmd_baselines(args: argparse.Namespace) -> int:
    from ensemble.data.runs import open_run
    from ensemble.search.baselines.runner import run_baselines

    timeout = parse_duration(args.timeout) if args.timeout else None
    run = open_run(args.run, data=args.data)
    return run_baselines(
        run,
        models=args.models,
        trials=args.trials,
        jobs=args.jobs,
        timeout=timeout,
        storage_url=args.storage,
        spaces_dir=Path(args.spaces) if args.spaces else None,
        refit=not args.no_refit,
        seed=args.seed,
    )
