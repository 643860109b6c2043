"""The stages of ``ensemble run`` (see :mod:`ensemble.pipeline.run`): search, build, report, fallback."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.combine.records import Comparison
from ensemble.errors import NoModelError
from ensemble.pipeline.baselines_child import KILL_GRACE_S, BaselineWorker, wait_for
from ensemble.pipeline.cnn_stage import cnn_search, cnn_space
from ensemble.search.baselines.fallback import fallback_model

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.pipeline.presets import Preset
    from ensemble.pipeline.state import Budget, Log, Stages
    from ensemble.search.cnn.pool import TrainerPool
    from ensemble.search.planned import PlannedSearch

POST_SEARCH_S = 150.0  # what build + report take at most (42k digits, quick preset: 15-60 s measured)


def search_stage(run: Run, s: Preset, stages: Stages, budget: Budget, log: Log, storage_url: str | None) -> None:
    """CNN study in this process while the baselines run in a child process."""
    need_cnn, need_base = not stages.done("cnn_search"), not stages.done("baselines")
    if not (need_cnn or need_base):
        log("search", "CNN search and baselines already finished (stages.json); skipping")
        return
    with contextlib.ExitStack() as stack:
        pool = None
        if need_cnn:  # a changed space is refused before the plan's probe and the baselines start
            from ensemble.search.cnn.study import check_space

            check_space(run, cnn_space(s)[1], storage_url)
            pool = stack.enter_context(_trainers(run, s, log.for_stage("cnn")))
        _search_and_baselines(run, s, stages, budget, log, storage_url, pool, need_cnn=need_cnn, need_base=need_base)


def _trainers(run: Run, s: Preset, log: Callable[[str], None]) -> AbstractContextManager[TrainerPool]:
    """The CNN search's trainers, started before its plan: the first one runs the speed probe, then trials."""
    from ensemble.search.cnn import study as search

    settings = search.SearchSettings(seed=s.seed, max_train=s.max_train, jobs=s.trials_per_device, devices=s.devices)
    return search.trainers(run, settings, log)


def _search_and_baselines(
    run: Run,
    s: Preset,
    stages: Stages,
    budget: Budget,
    log: Log,
    storage_url: str | None,
    pool: TrainerPool | None,
    *,
    need_cnn: bool,
    need_base: bool,
) -> None:
    """The plan (its probe in ``pool``'s first trainer), then the CNN study here and the baselines beside it."""
    deadline = budget.ends["search"]
    worker: BaselineWorker | None = None
    planned: PlannedSearch | None = None
    t0 = time.time()
    if need_cnn and s.plan:  # searches + refits may use the build/report shares they will not need
        post = min(budget.ends["report"] - budget.ends["search"], POST_SEARCH_S)
        planned = _plan(run, s, stages, budget.ends["report"] - post, log, storage_url, pool)
        deadline = planned.deadline
    if need_base and s.baselines:
        worker = BaselineWorker(run, s, deadline, log.for_stage("baselines"), storage_url)
        worker.on_done = lambda: stages.finish("baselines", time.time() - t0)
        worker.start()
    try:
        if need_cnn:
            info = cnn_search(run, s, budget.ends["search"], log.for_stage("cnn"), storage_url, planned, pool)
            stages.finish("cnn_search", time.time() - t0, **info.as_record())
            log("cnn", f"CNN search finished: {info.trials}" + (" (cut short by the budget)" * info.cut_short))
        if worker is not None:
            wait_for(worker, deadline + KILL_GRACE_S, log)
    except BaseException as exc:
        if worker is not None:
            worker.stop(interrupt=isinstance(exc, KeyboardInterrupt))  # Ctrl-C: its trials run again too
        raise
    if stages.done("baselines"):
        return
    if worker is None or worker.ok:
        stages.finish("baselines", time.time() - t0, stopped_at_deadline=bool(worker and worker.stopped))
    else:
        log("baselines", f"baselines did not finish cleanly ({'; '.join(worker.errors)}); a re-run continues them")


def _plan(
    run: Run, s: Preset, stages: Stages, end: float, log: Log, storage_url: str | None, pool: TrainerPool | None
) -> PlannedSearch:
    """Measure, plan members x epochs until ``end`` (searches + refits), and record the plan in stages.json."""
    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.planned import plan_search

    _, space = cnn_space(s)
    config = CnnConfig.from_json(space.defaults(), extra="ignore")
    assert s.plan is not None
    refits = s.plan.refit_members if s.plan.refit_members is None else min(s.plan.refit_members, s.top_k)
    settings = dataclasses.replace(
        s.plan, refit=s.refit_full, max_members=min(s.plan.max_members, s.cnn_trials), refit_members=refits
    )
    planned = plan_search(
        run,
        config,
        settings=settings,
        max_train=s.max_train,
        end=end,
        log=log.for_stage("plan"),
        previous=stages.plan(),
        storage_url=storage_url,
        probe=pool.probe if pool is not None else None,
    )
    stages.note(plan={"members": planned.plan.members, "epochs": planned.plan.epochs})
    return planned


# ---------------------------------------------------------------- build, report, fallback
def build_stage(run: Run, s: Preset, stages: Stages, log: Log, storage_url: str | None) -> None:
    """Soft-voting ensemble of the top CNN trials; skipped (not failed) when there is no CNN trial."""
    if stages.done("build"):
        log("build", "ensemble already built (stages.json); skipping")
        return
    from ensemble.combine.build import build_ensemble

    t0 = time.time()
    try:
        m = build_ensemble(
            run,
            top_k=s.top_k,
            weights=s.weights,
            tta=s.tta,
            seed=s.seed,
            include_baselines=s.include_baselines,
            storage_url=storage_url,
            progress=False,
            say=log.for_stage("build"),
        )
    except NoModelError as exc:
        log("build", f"no ensemble: {exc}")
        stages.finish("build", time.time() - t0, skipped=str(exc))
        return
    final = (m.metrics or {}).get(Comparison.final(s.weights))
    holdout = f" (holdout {final.holdout.accuracy:.4f})" if final else ""
    log("build", f"ensemble of {len(m.members)} members written in {time.time() - t0:.0f}s{holdout}")
    stages.finish("build", time.time() - t0, members=len(m.members))


@dataclass(frozen=True)
class ReportOutcome:
    """What the report stage wrote: the final model, its holdout accuracy and the submission's path."""

    final_model: str
    holdout_accuracy: float
    submission: Path

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> ReportOutcome:
        """From ``report/summary.json``."""
        return cls(summary["final_model"], float(summary["holdout_accuracy"]), Path(summary["submission"]))


def report_stage(
    run: Run, stages: Stages, log: Log, storage_url: str | None, again: bool = False, show: bool = True
) -> ReportOutcome:
    """Leaderboard, report files and the submission (from a fallback model if no model exists).

    ``again``: rewrite them even if the stage is done (after the final refit, after each final member).
    ``show``: print the leaderboard (else one line).
    """
    from ensemble.io import read_json
    from ensemble.report.console import print_report
    from ensemble.report.final import submission_is_current
    from ensemble.report.make import run_report

    summary = run.path("report", "summary.json")
    done = not again and stages.done("report") and summary.is_file() and run.path("submission.csv").is_file()
    if done and not submission_is_current(run, read_json(summary)):
        log("report", "the submission is not from the final model's refit (stopped before its report): rewriting it")
    elif done:
        got = ReportOutcome.from_summary(read_json(summary))
        log("report", f"report already written: {run.path('report', 'report.html')}")
        log("report", f"final model {got.final_model} (holdout {got.holdout_accuracy:.4f}) -> {got.submission}")
        return got
    t0 = time.time()
    try:
        result = run_report(run, storage_url=storage_url, say=log.for_stage("report"))
    except NoModelError as exc:
        log("report", f"{exc}: training a quick fallback model so that a submission is still written")
        fallback_model(run, storage_url, log.for_stage("fallback"))
        result = run_report(run, storage_url=storage_url, say=log.for_stage("report"))
    final = result.final
    if show:
        print_report(result)
    else:
        log("report", f"submission rewritten from {result.refit.name if result.refit else final.name}")
    stages.finish("report", time.time() - t0, final_model=final.name)
    return ReportOutcome(final.name, final.scored.holdout_accuracy, result.submission)


def refit_stage(run: Run, s: Preset, stages: Stages, end: float, log: Log, final: str, storage_url: str | None) -> bool:
    """Refit the final model's CNNs on every labeled digit until ``end``; True when a refit was written."""
    if stages.done("refit"):
        log("refit", "final refit already done (stages.json); skipping")
        return False
    t0 = time.time()
    if not s.refit_full:
        stages.finish("refit", 0.0, skipped="refit_full is off")
        return False
    from ensemble.inference.refit import refit_full

    m = refit_full(
        run,
        final=final,
        deadline=end - 20.0,
        seed=s.seed,
        storage_url=storage_url,
        say=log.for_stage("refit"),
        devices=s.devices,
    )
    done = [e.name for e in (m.members if m else ()) if e.refit_full and e.refit_full.refit]
    stages.finish("refit", time.time() - t0, final_model=final, refitted=done)
    if m is not None and m.refit_full is not None:
        rows = m.refit_full.rows
        log("refit", f"refitted {len(done)} CNN member(s) of {final} on {rows:,} digits in {time.time() - t0:.0f}s")
    return m is not None
