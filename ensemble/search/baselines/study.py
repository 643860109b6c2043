"""Classical baselines as tuned Optuna studies, one study ``baseline-<family>`` per family.

Search trials fit on a stratified subsample of the training part (``search_rows`` in the
family's search-space file) and are scored on the validation part. After the search, the
best search trial's params are refitted on the whole training part as one more trial of
the same study (``user_attrs['stage'] == 'refit'``). The holdout is only predicted.

Trials run in joblib/loky worker processes (``jobs``), each limited to
``cores // jobs`` BLAS/OpenMP threads; all of them write the run's journal storage.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.locks import worker_token
from ensemble.metrics import accuracy, log_loss
from ensemble.search.artifacts import partial_trial_path, save_probas, trial_dir, upload_trial
from ensemble.search.baselines.models import (
    FAMILIES,
    Family,
    FitContext,
    full_proba,
    space_keys,
    xgboost_device,
)
from ensemble.search.baselines.saved import save_model
from ensemble.search.interrupt import interrupted
from ensemble.search.spaces import Space, load_space
from ensemble.search.storage import mark_owner, open_storage

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run


@dataclass(frozen=True)
class Parts:
    """The arrays a trial needs, plus the run folder (duck-types ``Run.path`` for storage/artifacts)."""

    root: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_holdout: np.ndarray
    x_test: np.ndarray

    @classmethod
    def from_run(cls, run: Run) -> Parts:
        (xt, yt), (xv, yv), (xh, _) = run.part("train"), run.part("val"), run.part("holdout")
        return cls(run.root.resolve(), xt, yt, xv, yv, xh, run.x_test)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def name(self) -> str:
        """The run's name (its folder's): names its studies in a shared storage."""
        return self.root.name


@dataclass(frozen=True)
class Task:
    """One trial to run in a worker: a search trial, or the refit of search trial ``refit_of``."""

    family: str
    space_path: Path
    storage: str | None
    seed: int
    threads: int
    data_seed: int = 0
    deadline: float | None = None
    refit_of: int | None = None
    refit_params: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return "search" if self.refit_of is None else "refit"


@dataclass
class TaskResult:
    """What a worker reports back about its trial."""

    family: str
    stage: str
    state: str  # complete | failed | skipped
    number: int | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    n_train: int | None = None
    error: str | None = None


def subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified random subsample of ``n`` rows (all rows if n >= len(y))."""
    if not n or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = n * counts / len(y)
    take = np.floor(share).astype(int)
    take[np.argsort(take - share)[: n - take.sum()]] += 1  # largest remainders get the leftover rows
    picks = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks))


def _fit_and_predict(parts: Parts, family: Family, params: dict[str, Any], rows: np.ndarray, task: Task) -> dict:
    from threadpoolctl import threadpool_limits

    from ensemble.search.baselines.preprocess import fit_preprocessor, split_params

    pre_params, model_params = split_params(params)
    x, y = parts.x_train[rows], parts.y_train[rows]
    device = xgboost_device()[0] if family.kind == "xgboost" else "cpu"
    with threadpool_limits(limits=task.threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        pre = fit_preprocessor(x, seed=task.seed, **pre_params)
        xf = pre.transform(x)
        ctx = FitContext(task.threads, task.seed, device, xf.shape[1], float(xf.var()))
        model = family.build(model_params, ctx).fit(xf, y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        probas = {
            k: full_proba(model, pre.transform(a))
            for k, a in (("val", parts.x_val), ("holdout", parts.x_holdout), ("test", parts.x_test))
        }
        predict_s = time.perf_counter() - t0
    notes = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
    return {
        "pre": pre,
        "model": model,
        "probas": probas,
        "fit_s": fit_s,
        "predict_s": predict_s,
        "notes": notes,
        "device": device,
    }


def _write_artifacts(parts: Parts, family: Family, number: int, out: dict, config: dict) -> Path:
    """Write into a hidden ``.trial-NNNN.partial`` folder, then rename it to the trial folder.

    A trial that fails (or a process that is killed) never leaves a ``trial-NNNN`` folder behind.
    """
    tmp = partial_trial_path(parts, family.study_name, number)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = save_model(tmp, family, out["pre"], out["model"])
        save_probas(tmp, out["probas"])
        (tmp / "config.json").write_text(json.dumps({**config, "files": files}, indent=2, default=str) + "\n")
        folder = trial_dir(parts, family.study_name, number)  # created empty by the shared helper
        shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def objective(trial: optuna.Trial, *, parts: Parts, family: Family, space: Space, task: Task) -> float:
    """Fit one configuration, save its artifacts, record user_attrs; returns validation accuracy."""
    mark_owner(trial, parts.root)
    stage = trial.user_attrs.get("stage", "search")
    params = space.suggest(trial)
    search_rows = params.pop("search_rows", 0)
    rows = subsample(parts.y_train, 0 if stage == "refit" else search_rows, seed=task.data_seed)
    try:
        out = _fit_and_predict(parts, family, params, rows, task)
        p_val = out["probas"]["val"]
        acc = accuracy(parts.y_val, p_val)
        loss = log_loss(parts.y_val, p_val)
        from ensemble.search.baselines.preprocess import describe

        config = {
            "family": family.name,
            "kind": family.kind,
            "study": family.study_name,
            "trial": trial.number,
            "stage": stage,
            "params": params,
            "preprocessing": describe(out["pre"]),
            "n_train": int(len(rows)),
            "val_accuracy": acc,
            "val_logloss": loss,
        }
        folder = _write_artifacts(parts, family, trial.number, out, config)
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
        raise
    attrs = {
        "family": family.name,
        "stage": stage,
        "n_train": int(len(rows)),
        "val_accuracy": acc,
        "val_logloss": loss,
        "fit_seconds": round(out["fit_s"], 3),
        "predict_seconds": round(out["predict_s"], 3),
        "device": out["device"],  # cpu, or cuda for XGBoost on a GPU
        "artifact_dir": str(folder),
        "preprocessing": config["preprocessing"],
    }
    if out["notes"]:
        attrs["warnings"] = "; ".join(out["notes"])[:500]
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    upload_trial(trial, folder)  # to the artifact store, when the run has one
    return acc


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """TPE with a short random start: the baselines run few trials per family."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


def run_task(parts: Parts, task: Task) -> TaskResult:
    """Run one trial (in a worker process); failures are recorded, not raised."""
    import optuna

    if task.refit_of is None and task.deadline is not None and time.time() > task.deadline:
        return TaskResult(task.family, task.stage, "skipped")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    family = FAMILIES[task.family]
    space = load_space(task.space_path, known=space_keys(family))
    storage = open_storage(parts, task.storage)
    study = optuna.load_study(study_name=family.study_name, storage=storage, sampler=make_sampler(task.seed))
    if task.refit_of is not None:
        study.enqueue_trial(task.refit_params, user_attrs={"stage": "refit", "refit_of": task.refit_of})
    seen: list[optuna.trial.FrozenTrial] = []
    t0 = time.perf_counter()
    worker_token(parts.root)  # held before Optuna creates the trial (see ensemble.locks)

    def func(trial: optuna.Trial) -> float:
        try:
            return objective(trial, parts=parts, family=family, space=space, task=task)
        except KeyboardInterrupt:  # Ctrl-C: not counted, run again (a refit is queued again by its next task)
            raise interrupted(trial, queue=task.refit_of is None, stage="search") from None

    study.optimize(func, n_trials=1, catch=(Exception,), callbacks=[lambda _s, t: seen.append(t)])
    t = seen[-1]
    ok = t.state == optuna.trial.TrialState.COMPLETE
    return TaskResult(
        task.family,
        t.user_attrs.get("stage", task.stage),
        "complete" if ok else "failed",
        number=t.number,
        val_accuracy=t.value if ok else None,
        seconds=time.perf_counter() - t0,
        n_train=t.user_attrs.get("n_train"),
        error=t.user_attrs.get("error"),
    )


def run_parallel(parts: Parts, tasks: list[Task], jobs: int) -> Iterator[TaskResult]:
    """Run tasks over ``jobs`` loky workers (in-process when jobs == 1), yielding results as they finish."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield run_task(parts, task)
        return
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=min(jobs, len(tasks)), backend="loky", return_as="generator_unordered")
    yield from par(delayed(run_task)(parts, t) for t in tasks)
