"""``ensemble run``: data -> baselines alongside the CNN search -> build -> report -> submission.

Every stage records its completion in ``runs/NAME/stages.json``; re-running the same command skips
finished stages and continues unfinished ones (the Optuna studies count the trials already done).
A global time budget is split across the stages still to do; the searches stop gracefully when
their share runs out (no new trials, and a running CNN trial is pruned at its next epoch once it
would end past the deadline). A submission is always written: from the best model available, or
from a quick fallback model when a run was cut short before any model finished.

CPU sharing: the CNN study trains in this process on every core; the baselines run meanwhile in
one child process (``ensemble baselines --jobs N``) pinned to the last N cores (quick: 1; never all
of them) at a lower priority (``nice``), so they use what the CNN leaves and slow it little. See ``PRESETS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ensemble.pipeline.presets import STAGES, scaled_budget, settings_for
from ensemble.pipeline.state import Budget, Log, Stages, clock

if TYPE_CHECKING:
    from ensemble.pipeline.stages import ReportOutcome


def run_pipeline(
    name: str,
    *,
    data: str | None = None,
    preset: str = "quick",
    time_budget: float | None = None,
    restart: bool = False,
    overrides: Mapping[str, object] | None = None,
    storage_url: str | None = None,
    say: Callable[[str], None] | None = None,
) -> ReportOutcome:
    """The whole job; returns what the last report wrote (the final model, its holdout score, the submission).

    Holds the run's writer lock throughout: a second ``ensemble run``/``build``/``report`` on the
    same run exits at once (workers that only add trials may still join).
    """
    from ensemble.data.runs import check_name, runs_dir
    from ensemble.locks import run_lock

    check_name(name)
    with run_lock(runs_dir(), name):
        return _run_locked(name, data, preset, time_budget, restart, overrides, storage_url, say)


def _run_locked(
    name: str,
    data: str | None,
    preset: str,
    time_budget: float | None,
    restart: bool,
    overrides: Mapping[str, object] | None,
    storage_url: str | None,
    say: Callable[[str], None] | None,
) -> ReportOutcome:
    from ensemble.data.runs import open_run, run_root, sweep_debris
    from ensemble.durations import parse_duration
    from ensemble.search.interrupt import quiet_interrupts
    from ensemble.search.restart import delete_run
    from ensemble.search.storage import dashboard_command, redact, worker_command

    s = settings_for(preset, overrides)
    quiet_interrupts()
    log = Log(say)  # the budget counts from here: loading the data is part of it
    root = run_root(name)
    if restart:
        delete_run(name, storage_url=storage_url, say=log.for_stage("run"))
    elif root.is_dir():
        for p in sweep_debris(root, say=log.for_stage("run")):
            log("run", f"removed {p.relative_to(root)} (left by an interrupted process)")
    stages = Stages(root / "stages.json")
    todo = [st for st in STAGES if not stages.done(st)]
    if not todo:
        log("run", f"all stages of run '{name}' are finished (use --restart to redo them)")
    t = time.time()
    run = open_run(name, data=data, say=log.for_stage("data"))  # run.path() is root: the same stages.json
    if not stages.done("data"):
        sizes = run.meta["split"]["sizes"]
        log("data", f"split train {sizes['train']:,} / val {sizes['val']:,} / holdout {sizes['holdout']:,}")
        stages.finish("data", time.time() - t)
    budget_s, scaled = time_budget, ""
    if budget_s is None:  # the preset's budget is for Kaggle's 42,000 digits: less data, less time
        preset_s = parse_duration(s.budget)
        budget_s = scaled_budget(preset_s, len(run.dataset.y_train))
        if budget_s < preset_s:
            scaled = f", the preset's {s.budget} scaled to {len(run.dataset.y_train):,} labeled digits"
    stages.note(preset=preset, settings=s.as_dict(), budget_seconds=budget_s)
    log("run", f"Optuna dashboard (watch it live):  {redact(dashboard_command(run, storage_url))}")
    if worker_command(run, storage_url):
        log("run", f"add a machine to the CNN search:  {worker_command(run, storage_url)}")
    shares = {"search": 0.0, "build": 0.0, "report": 0.0, **s.shares}
    groups = {"search": ("cnn_search", "baselines"), "build": ("build",), "report": ("report",)}
    active = [g for g, members in groups.items() if any(m in todo for m in members)]
    budget = Budget(budget_s, shares, active, start=log.t0)
    if todo:
        log("run", f"preset {preset}, time budget {clock(budget_s)} (mm:ss{scaled}): {budget.describe()}")
    from ensemble.pipeline.final import final_stage
    from ensemble.pipeline.stages import build_stage, refit_stage, report_stage, search_stage

    search_stage(run, s, stages, budget, log, storage_url)
    build_stage(run, s, stages, log, storage_url)
    got = report_stage(run, stages, log, storage_url)
    end = budget.start + budget.seconds
    if refit_stage(run, s, stages, end, log, got.final_model, storage_url):
        got = report_stage(run, stages, log, storage_url, again=True)  # the submission from the refit
    got = final_stage(run, s, stages, end, log, got, storage_url)
    if len(todo) == len(STAGES):  # every stage ran in this invocation: its wall time is the run's
        stages.note(wall_seconds=round(time.time() - log.t0, 1))
    return got
