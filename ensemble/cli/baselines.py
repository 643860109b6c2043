"""``ensemble baselines``: tune classical models (scikit-learn + XGBoost) as Optuna studies."""

from __future__ import annotations

import argparse
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.cli.data import add_run_args
from ensemble.durations import parse_duration
from ensemble.errors import UsageError
from ensemble.search.baselines.models import FAMILIES

if TYPE_CHECKING:
    from ensemble.search.baselines.study import Task, TaskResult

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
    p.add_argument(
        "--storage", metavar="URL", help="Optuna storage URL (default: journal file runs/NAME/optuna.journal)"
    )
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


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _check_args(args: argparse.Namespace) -> tuple[int, float | None]:
    if args.trials < 0:
        raise UsageError(f"--trials must be >= 0, got {args.trials}")
    jobs = args.jobs if args.jobs is not None else _cpu_count()
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    timeout = parse_duration(args.timeout) if args.timeout else None
    return jobs, timeout


def cmd_baselines(args: argparse.Namespace) -> int:
    from ensemble.data.runs import open_run
    from ensemble.search.baselines import study as bl
    from ensemble.search.storage import dashboard_command

    jobs, timeout = _check_args(args)
    names = bl.parse_models(args.models)
    spaces_dir = Path(args.spaces) if args.spaces else None  # None: the shipped spaces
    fams = [FAMILIES[n] for n in names]
    spaces = {f.name: bl.load_family_space(f, bl.space_path(f.name, spaces_dir)) for f in fams}
    run = open_run(args.run, data=args.data)
    parts = bl.Parts.from_run(run)
    threads = max(1, _cpu_count() // jobs)
    print(f"Optuna dashboard: {dashboard_command(run, args.storage)}")
    print(
        f"run {run.name}: train {len(parts.y_train):,} / val {len(parts.y_val):,} rows; "
        f"{jobs} worker(s) x {threads} thread(s); families: {', '.join(names)}"
    )
    if "xgboost" in names:
        device, why = bl.xgboost_device()
        print(f"XGBoost device: {device} ({why})")
    t_start = time.time()
    studies = bl.ensure_studies(parts, fams, spaces, args.storage)
    deadline = t_start + timeout if timeout else None

    def make(name: str, i: int = 0, **kw: Any) -> Task:
        base = len(studies[name].trials) + zlib.crc32(name.encode()) % 10_000  # families draw differently
        return bl.Task(
            name, bl.space_path(name, spaces_dir).resolve(), args.storage, seed=args.seed * 100_003 + base + i,
            threads=threads, data_seed=args.seed, deadline=deadline, **kw,
        )  # fmt: skip

    search = [make(n, i) for i in range(args.trials) for n in names]
    results: list[TaskResult] = []
    with _Progress(names, args.trials + (0 if args.no_refit else 1)) as prog:
        for r in bl.run_parallel(parts, search, jobs):
            results.append(prog.update(r))
        if not args.no_refit:
            refits = bl.refit_tasks(studies, spaces, parts, make)
            prog.skip_refit({n for n in names} - {t.family for t in refits})
            for r in bl.run_parallel(parts, refits, jobs):
                results.append(prog.update(r))
    return _summarize(bl, fams, studies, results, time.time() - t_start, run, args.storage)


class _Progress:
    """One rich progress bar per family, plus a log line per finished trial."""

    def __init__(self, names: list[str], per_family: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
        )  # fmt: skip
        self.ids = {n: self.progress.add_task(n, total=per_family, best="") for n in names}
        self.best: dict[str, float] = {}

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, r: TaskResult) -> TaskResult:
        if r.state == "complete" and r.val_accuracy is not None:
            self.best[r.family] = max(self.best.get(r.family, 0.0), r.val_accuracy)
            msg = f"val_acc {r.val_accuracy:.4f}  n_train {r.n_train:,}  {r.seconds:.1f}s"
        elif r.state == "failed":
            msg = f"FAILED: {r.error}"
        else:
            msg = "skipped (--timeout reached)"
        if r.state != "skipped":
            self.progress.console.print(f"{r.family:<11} trial {r.number:>4} {r.stage:<6} {msg}", highlight=False)
        best = f"best {self.best[r.family]:.4f}" if r.family in self.best else ""
        self.progress.update(self.ids[r.family], advance=1, best=best)
        return r

    def skip_refit(self, names: set[str]) -> None:
        for n in names:
            self.progress.update(self.ids[n], advance=1)


def _summarize(bl: Any, fams: list, studies: dict, results: list, wall: float, run: Any, storage: str | None) -> int:
    from ensemble.errors import EnsembleError
    from ensemble.search.storage import optuna_cli_args

    print(f"{'family':<11} {'trials':>6} {'failed':>6} {'best val_acc':>12} {'trial':>5} {'n_train':>8} {'time':>7}")
    no_result = []
    for fam in fams:
        s = bl.family_summary(studies[fam.name])
        mine = [r for r in results if r.family == fam.name]
        spent = sum(r.seconds for r in mine)
        best = s["best"]
        if best is None:
            no_result.append(fam.name)
            print(f"{fam.name:<11} {s['complete']:>6} {s['failed']:>6} {'-':>12} {'-':>5} {'-':>8} {spent:>6.0f}s")
            continue
        n_train = best.user_attrs.get("n_train", 0)
        print(
            f"{fam.name:<11} {s['complete']:>6} {s['failed']:>6} {best.value:>12.4f} {best.number:>5} "
            f"{n_train:>8,} {spent:>6.0f}s"
        )
    print(f"done in {wall:.0f}s wall; time = seconds spent in this invocation's trials per family")
    print(f"inspect: optuna trials --study-name {fams[0].study_name} {optuna_cli_args(run, storage)}")
    skipped = sum(r.state == "skipped" for r in results)
    if skipped:
        print(f"{skipped} search trial(s) not started: --timeout reached")
    failed = [r for r in results if r.family in no_result and r.state == "failed"]
    if failed:
        raise EnsembleError(f"no completed trial for {', '.join(no_result)}: {failed[0].error}")
    return 0
