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

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemble.errors import UsageError
from ensemble.io import read_json, write_json

#: Everything a preset sets, in one place. "shares": how the time budget is split across stages.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {  # CPU, 2 cores: <= 30 min on the 42k Kaggle data
        "budget": "28m",
        "space": "cnn_quick.yaml",
        "cnn_trials": 8,  # a cap: the budget's plan sets how many members (and epochs) fit
        # margins: fractions of the probed speed (the probe runs alone). Measured on 2 cores: search trials
        # beside the baselines 0.68-0.75 (1,650-1,670 vs 2,300-2,600 images/s), a refit alone 0.80-0.84
        "plan": {
            "min_epochs": 12,
            "max_epochs": 24,
            "min_members": 2,
            "max_members": 8,
            "overhead_s": 20.0,
            "speed_margin": 0.7,
            "refit_margin": 0.8,
        },
        "refit_full": True,  # refit the final model's CNNs on every labeled digit for the submission
        "max_train": None,
        # no median pruning: with time for ~4 trials, epoch-3 accuracy under a one-cycle schedule
        # says little (a measured run pruned 4 of 6 trials and kept 2 members); the deadline still stops trials
        "pruner": "none",
        "mixed_precision": False,  # float16 compute; "auto": on when Keras sees a GPU
        "baselines": "logreg,knn,svm,extratrees",
        "baseline_trials": 2,
        "baseline_nice": 5,
        "baseline_cores": 1,  # cores for the baselines child (at most all but one)
        "top_k": 5,
        "weights": "greedy",
        "tta": "auto",
        # the deskewed baselines are diverse enough to help: on Kaggle's data greedy selection with
        # them reached 0.9950 validation / 0.9960 holdout vs 0.9938 / 0.9950 for the 3 CNNs alone
        "include_baselines": True,
        "shares": {"search": 0.87, "build": 0.09, "report": 0.04},
    },
    "standard": {  # CPU, a couple of hours
        "budget": "2h",
        "space": "cnn.yaml",
        "cnn_trials": 30,
        "plan": {
            "min_epochs": 20,
            "max_epochs": 30,
            "min_members": 3,
            "max_members": 12,
            "overhead_s": 20.0,
            "speed_margin": 0.7,
            "refit_margin": 0.8,
        },
        "refit_full": True,
        "max_train": None,
        "pruner": "median",
        "mixed_precision": False,  # float16 compute; "auto": on when Keras sees a GPU
        "baselines": "logreg,rf,extratrees,knn,svm,xgboost",
        "baseline_trials": 4,
        "baseline_nice": 5,
        "baseline_cores": 1,
        "top_k": 5,
        "weights": "greedy",
        "tta": "auto",
        "include_baselines": True,
        "shares": {"search": 0.85, "build": 0.11, "report": 0.04},
    },
    "best": {  # a GPU (or a long CPU run): wider, deeper CNNs, more epochs and trials
        "budget": "6h",
        "space": "cnn_best.yaml",
        "cnn_trials": 60,
        "plan": {"min_epochs": 20, "max_epochs": 40, "min_members": 5, "max_members": 60, "overhead_s": 10.0},
        "refit_full": True,
        "max_train": None,
        "pruner": "median",
        # "auto" would turn float16 on with a GPU; off: on an H200 it was slower for these small CNNs
        # (ours, batch 512: 207-238k vs 254-264k images/s in float32; benchmarks/gpu_throughput.py)
        "mixed_precision": False,
        "baselines": "logreg,rf,extratrees,knn,svm,xgboost",
        "baseline_trials": 8,
        "baseline_nice": 5,
        "baseline_cores": 4,
        "top_k": 7,
        "weights": "greedy",
        "tta": "auto",
        "include_baselines": True,
        "shares": {"search": 0.88, "build": 0.09, "report": 0.03},
    },
}
STAGES = ("data", "cnn_search", "baselines", "build", "report", "refit")
OVERRIDES_ENV = "ENSEMBLE_RUN_OVERRIDES"  # JSON object merged into the preset (tests, experiments)


def settings_for(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's settings with overrides ($ENSEMBLE_RUN_OVERRIDES, then ``overrides``) applied."""
    if preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got '{preset}'")
    s = json.loads(json.dumps(PRESETS[preset]))
    env = os.environ.get(OVERRIDES_ENV)
    for extra in (json.loads(env) if env else {}, overrides or {}):
        unknown = set(extra) - set(s)
        if unknown:
            raise UsageError(f"unknown run setting(s) {sorted(unknown)}; known: {', '.join(s)}")
        s.update(extra)
    return s


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, true, null), else as text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class Log:
    """Timestamped, thread-safe status lines: ``[mm:ss stage] message``."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.t0 = time.time()
        self.say = say
        self.lock = threading.Lock()

    def __call__(self, stage: str, msg: str) -> None:
        m, s = divmod(int(time.time() - self.t0), 60)
        with self.lock:
            self.say(f"[{m:02d}:{s:02d} {stage}] {msg}")
            sys.stdout.flush()

    def for_stage(self, stage: str) -> Callable[[str], None]:
        return lambda msg: self(stage, msg.strip())


class Stages:
    """``runs/NAME/stages.json``: which stages finished, when, how long they took.

    Every update re-reads the file under an OS lock (``.stages.lock``) and rewrites it atomically,
    so threads and processes never lose each other's updates.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # flock is per open file: threads of one process need their own lock

    @property
    def data(self) -> dict[str, Any]:
        return read_json(self.path) if self.path.is_file() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        from ensemble.locks import locked

        with self.lock, locked(self.path.with_name(".stages.lock")):
            data = self.data
            change(data)
            write_json(self.path, data)

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        entry = {"done": True, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        self._update(lambda d: d["stages"].__setitem__(stage, entry))

    def note(self, **info: Any) -> None:
        self._update(lambda d: d.update(info))


class Budget:
    """Deadlines for the stages still to do, from the global budget and the preset's shares."""

    def __init__(self, seconds: float, shares: dict[str, float], todo: list[str]) -> None:
        self.start = time.time()
        self.seconds = seconds
        active = {k: v for k, v in shares.items() if k in todo}
        total = sum(active.values()) or 1.0
        self.ends, t = {}, self.start
        for k in ("search", "build", "report"):
            t += seconds * active.get(k, 0.0) / total
            self.ends[k] = t

    def left(self, stage: str) -> float:
        return self.ends[stage] - time.time()

    def describe(self) -> str:
        return ", ".join(f"{k} until {_clock(v - self.start)}" for k, v in self.ends.items())


def _quiet_interrupts() -> None:
    """Ctrl-C: one 'interrupted' line, not Optuna's traceback of the trial it stopped (the trial is kept as FAIL)."""
    import logging

    import optuna  # noqa: F401  (creates the 'optuna' logger's handler)

    class NoInterrupt(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            return not isinstance(exc, KeyboardInterrupt) and "KeyboardInterrupt" not in record.getMessage()

    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(NoInterrupt())


def _clock(seconds: float) -> str:
    m, s = divmod(max(0, int(seconds)), 60)
    return f"{m:02d}:{s:02d}"


def run_pipeline(
    name: str,
    *,
    data: str | None = None,
    preset: str = "quick",
    time_budget: float | None = None,
    restart: bool = False,
    overrides: dict[str, Any] | None = None,
    storage_url: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The whole job; returns what the report stage found (final model, submission path...).

    Holds the run's writer lock throughout: a second ``ensemble run``/``build``/``report`` on the
    same run exits at once (workers that only add trials may still join).
    """
    from ensemble.locks import run_lock
    from ensemble.data.runs import check_name, runs_dir

    check_name(name)
    with run_lock(runs_dir(), name):
        return _run_locked(name, data, preset, time_budget, restart, overrides, storage_url, say)


def _run_locked(
    name: str,
    data: str | None,
    preset: str,
    time_budget: float | None,
    restart: bool,
    overrides: dict[str, Any] | None,
    storage_url: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    from ensemble.durations import parse_duration
    from ensemble.data.runs import delete_run, open_run, run_root, sweep_debris
    from ensemble.search.storage import dashboard_command, redact

    s = settings_for(preset, overrides)
    _quiet_interrupts()
    budget_s = time_budget if time_budget is not None else parse_duration(str(s["budget"]))
    log = Log(say)
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
    run = open_run(name, data=data, say=log.for_stage("data"))
    stages = Stages(run.path("stages.json"))
    if not stages.done("data"):
        sizes = run.meta["split"]["sizes"]
        log("data", f"split train {sizes['train']:,} / val {sizes['val']:,} / holdout {sizes['holdout']:,}")
        stages.finish("data", time.time() - t)
    stages.note(preset=preset, settings=s, budget_seconds=budget_s)
    log("run", f"Optuna dashboard (watch it live):  {redact(dashboard_command(run, storage_url))}")
    shares = {"search": 0.0, "build": 0.0, "report": 0.0, **s["shares"]}
    groups = {"search": ("cnn_search", "baselines"), "build": ("build",), "report": ("report",)}
    budget = Budget(budget_s, shares, [g for g, members in groups.items() if any(m in todo for m in members)])
    if todo:
        log("run", f"preset {preset}, time budget {_clock(budget_s)} (mm:ss): {budget.describe()}")
    from ensemble.pipeline.stages import build_stage, refit_stage, report_stage, search_stage

    search_stage(run, s, stages, budget, log, storage_url)
    build_stage(run, s, stages, log, storage_url)
    got = report_stage(run, s, stages, log, storage_url)
    if refit_stage(run, s, stages, budget.start + budget.seconds, log, got["final_model"], storage_url):
        got = report_stage(run, s, stages, log, storage_url, again=True)  # the submission from the refit
    return got


def describe_presets() -> str:
    """One line per preset for --help."""
    return "; ".join(
        f"{k}: budget {v['budget']}, CNN members x epochs planned from the measured speed (at most "
        f"{v['cnn_trials']} trials, {v['plan']['min_epochs']}-{v['plan']['max_epochs']} epochs, {v['space']}), "
        f"final refit on all labels {'on' if v['refit_full'] else 'off'}, baselines {v['baselines']}"
        for k, v in PRESETS.items()
    )
