"""``ensemble search``: the CNN study."""

from __future__ import annotations

import argparse

from ensemble.backends import BACKENDS, use_backend
from ensemble.cli.common import add_artifacts_arg, add_devices_arg, add_jobs_arg, add_run_args, add_storage_arg
from ensemble.durations import parse_duration

DEFAULT_SPACE = "cnn.yaml"  # a shipped space (ensemble.search.spaces.space_file)
BACKEND_HELP = "Keras backend (default: $KERAS_BACKEND, else the first installed of tensorflow, jax, torch)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run or continue the Optuna study of CNN hyperparameters (Keras 3)")
    add_run_args(p)
    p.add_argument("--trials", type=int, default=10, help="finished trials the study should have (default 10)")
    p.add_argument("--timeout", metavar="DURATION", help="stop starting trials after e.g. 30m")
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument(
        "--space",
        default=DEFAULT_SPACE,
        metavar="FILE",
        help="search-space YAML: a path, or the name of a space shipped with the package "
        "(cnn.yaml, cnn_quick.yaml, cnn_best.yaml; default %(default)s)",
    )
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="default: median")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default 0)")
    p.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--mixed-precision", action="store_true", help="train in mixed float16 (for GPUs)")
    p.add_argument("--max-train", type=int, metavar="N", help="train each trial on at most N rows of the train part")
    add_jobs_arg(p)
    add_devices_arg(p)
    p.set_defaults(func=cmd_search)


def set_backend(name: str | None) -> str:
    """Select the Keras backend before keras is imported (:func:`ensemble.backends.use_backend`)."""
    return use_backend(name)


def cmd_search(args: argparse.Namespace) -> int:
    set_backend(args.backend)
    from ensemble.data.runs import open_run
    from ensemble.errors import UsageError
    from ensemble.search.cnn.parallel import parse_jobs
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search
    from ensemble.search.devices import check_choice
    from ensemble.search.spaces import space_file
    from ensemble.search.storage import dashboard_command, optuna_cli_args, stored_study, worker_command

    if args.trials < 1:
        raise UsageError(f"--trials must be at least 1, got {args.trials}")
    timeout = parse_duration(args.timeout) if args.timeout else None
    jobs = parse_jobs(args.jobs)
    devices = check_choice(args.devices)
    space = load_cnn_space(space_file(args.space))
    run = open_run(args.run, data=args.data)
    print(f"Watch it live:  {dashboard_command(run, args.storage)}")
    if worker_command(run, args.storage):
        print(f"Add a machine:  {worker_command(run, args.storage)}")
    settings = SearchSettings(
        trials=args.trials,
        timeout=timeout,
        pruner=args.pruner,
        seed=args.seed,
        max_train=args.max_train,
        mixed_precision=args.mixed_precision,
        jobs=jobs,
        devices=devices,
    )
    study = run_search(run, space, settings, storage_url=args.storage, publish={})
    best = _best(study)
    if best is None:
        print("No completed trial yet.")
        return 0
    print(
        f"Best trial {best.number}: val_accuracy {best.value:.4f}, "
        f"val_logloss {best.user_attrs.get('val_logloss', float('nan')):.4f} ({best.user_attrs.get('artifact_dir')})"
    )
    study_name = stored_study(run, "cnn", args.storage)
    print(f"Inspect:        optuna trials --study-name {study_name} {optuna_cli_args(run, args.storage)}")
    return 0


def _best(study: object) -> object | None:
    try:
        return study.best_trial  # type: ignore[attr-defined]
    except ValueError:
        return None
