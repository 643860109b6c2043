"""``ensemble worker``: another machine joins a run's CNN study and trains trials until the study's target."""

from __future__ import annotations

import argparse

from ensemble.cli.common import add_artifacts_arg, add_devices_arg, add_jobs_arg, add_run_args, add_storage_arg
from ensemble.cli.search import BACKEND_HELP, BACKENDS, set_backend
from ensemble.durations import parse_duration


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="join a run's CNN study in a shared storage from another machine, train trials until its target",
        description="Opens run NAME with the same data (its fingerprint and split must match the run's), reads "
        "the search space, target, epochs, seed, max_train and precision that the run's first machine recorded "
        "in the study (each checked; it must be the same ensemble version), and trains "
        "trials with its own sampler seed until the study, all machines together, reaches the target; then "
        "exits 0. Needs a database storage (--storage or $ENSEMBLE_STORAGE); with --artifacts the trials' "
        "files go to the shared artifact store, so any machine can build the ensemble.",
    )
    add_run_args(p)
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--timeout", metavar="DURATION", help="stop starting trials after e.g. 2h")
    add_jobs_arg(p)
    add_devices_arg(p)
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    set_backend(args.backend)
    from ensemble.data.runs import open_run
    from ensemble.errors import UsageError
    from ensemble.search.cnn.parallel import parse_jobs
    from ensemble.search.cnn.worker import join
    from ensemble.search.devices import check_choice

    if not args.storage:
        raise UsageError("ensemble worker needs the run's shared storage: --storage URL or $ENSEMBLE_STORAGE")
    timeout = parse_duration(args.timeout) if args.timeout else None
    jobs = parse_jobs(args.jobs)
    devices = check_choice(args.devices)
    run = open_run(args.run, data=args.data)
    ran = join(run, args.storage, timeout=timeout, jobs=jobs, devices=devices)
    print(f"worker: done; this machine ran {ran} trial(s) of run '{run.name}'")
    return 0
