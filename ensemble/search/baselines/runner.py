"""``ensemble baselines`` as a library call: the families' searches in parallel worker processes, then the refits.

Prints a progress bar per family, a line per finished trial and a summary table.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.errors import UsageError
from ensemble.search.baselines.models import FAMILIES

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.search.baselines.study import Task, TaskResult


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_baselines(
    run: Run,
    *,
    models: str | None = None,
    trials: int = 4,
    jobs: int | None = None,
    timeout: float | None = None,
    storage_url: str | None = None,
    spaces_dir: Path | None = None,
    refit: bool = True,
    seed: int = 0,
) -> int:
    """Run ``trials`` search trials per family (and one refit of each family's best); 0, or EnsembleError."""
    from ensemble.search.baselines import study as bl
    from ensemble.search.baselines.spaces import load_family_space, parse_models, runnable, space_path
    from ensemble.search.baselines.studies import ensure_studies, refit_tasks
    from ensemble.search.storage import dashboard_command

    if trials < 0:
        raise UsageError(f"--trials must be >= 0, got {trials}")
    jobs = jobs if jobs is not None else _cpu_count()
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    names = runnable(parse_models(models))  # a family whose package is missing: skipped, one line
    fams = [FAMILIES[n] for n in names]
    spaces = {f.name: load_family_space(f, space_path(f.name, spaces_dir)) for f in fams}
    parts = bl.Parts.from_run(run)
    threads = max(1, _cpu_count() // jobs)
    print(f"Optuna dashboard: {dashboard_command(run, storage_url)}")
    print(
        f"run {run.name}: train {len(parts.y_train):,} / val {len(parts.y_val):,} rows; "
        f"{jobs} worker(s) x {threads} thread(s); families: {', '.join(names)}"
    )
    if "xgboost" in names:
        device, why = bl.xgboost_device()
        print(f"XGBoost device: {device} ({why})")
    t_start = time.time()
    studies = ensure_studies(parts, fams, spaces, storage_url)
    deadline = t_start + timeout if timeout else None

    def make(name: str, i: int = 0, **kw: Any) -> Task:
        base = len(studies[name].trials) + zlib.crc32(name.encode()) % 10_000  # families draw differently
        return bl.Task(
            name,
            space_path(name, spaces_dir).resolve(),
            storage_url,
            seed=seed * 100_003 + base + i,
            threads=threads,
            data_seed=seed,
            deadline=deadline,
            **kw,
        )

    search = [make(n, i) for i in range(trials) for n in names]
    results: list[TaskResult] = []
    with _Progress(names, trials + (1 if refit else 0)) as prog:
        for r in bl.run_parallel(parts, search, jobs):
            results.append(prog.update(r))
        if refit:
            refits = refit_tasks(studies, spaces, parts, make)
            prog.skip_refit(set(names) - {t.family for t in refits})
            for r in bl.run_parallel(parts, refits, jobs):
                results.append(prog.update(r))
    return _summarize(fams, studies, results, time.time() - t_start, run, storage_url)


class _Progress:
    """One rich progress bar per family, plus a log line per finished trial."""

    def __init__(self, names: list[str], per_family: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
        )
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


def _summarize(fams: list, studies: dict, results: list, wall: float, run: Run, storage: str | None) -> int:
    from ensemble.errors import EnsembleError
    from ensemble.search.baselines.studies import family_summary
    from ensemble.search.storage import optuna_cli_args, stored_study

    print(f"{'family':<11} {'trials':>6} {'failed':>6} {'best val_acc':>12} {'trial':>5} {'n_train':>8} {'time':>7}")
    no_result = []
    for fam in fams:
        s = family_summary(studies[fam.name])
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
    study = stored_study(run, fams[0].study_name, storage)
    print(f"inspect: optuna trials --study-name {study} {optuna_cli_args(run, storage)}")
    skipped = sum(r.state == "skipped" for r in results)
    if skipped:
        print(f"{skipped} search trial(s) not started: --timeout reached")
    failed = [r for r in results if r.family in no_result and r.state == "failed"]
    if failed:
        raise EnsembleError(f"no completed trial for {', '.join(no_result)}: {failed[0].error}")
    return 0
