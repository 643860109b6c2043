"""The ``cnn`` Optuna study: open or resume it, its sampler and pruner, and the search loop.

Each trial (:mod:`.objective`) samples a config from the search space (``search_spaces/cnn.yaml``),
trains on the run's train part, reports validation accuracy every epoch (so optuna-dashboard
draws learning curves and the pruner can stop bad trials), then saves ``model.keras``,
``config.json`` and validation/holdout/test probabilities in its trial folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble import logs
from ensemble.errors import UsageError
from ensemble.search.artifacts import CNN_STUDY, name_metric, trial_path
from ensemble.search.cnn import model as cnn
from ensemble.search.cnn import spec as worker_spec
from ensemble.search.cnn.arrays import write_arrays
from ensemble.search.cnn.config import DEFAULT, CnnConfig, ConfigValue, check_space_values
from ensemble.search.cnn.limits import TrainerLimits
from ensemble.search.cnn.objective import SearchSettings, TrialFailed, discard, make_objective
from ensemble.search.cnn.parallel import AUTO_MAX, Meter, optimize, parse_jobs
from ensemble.search.cnn.pool import TrainerPool
from ensemble.search.cnn.takeover import optimize_past_takeovers
from ensemble.search.devices import select
from ensemble.search.interrupt import on_interrupt, quiet_interrupts
from ensemble.search.spaces import Space, load_space
from ensemble.search.storage import check_run_identity, fail_stale_trials, open_storage, was_killed

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run

STUDY = CNN_STUDY
PRUNERS = worker_spec.PRUNERS


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """median | hyperband | none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_epochs))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{name}'")


def load_cnn_space(path: str | Path) -> Space:
    """Read the CNN search space; keys must be :class:`~ensemble.search.cnn.config.CnnConfig` keys."""
    space = load_space(path, known=CnnConfig.keys())
    check_space_values(space, where=str(path))  # its defaults, every choice and both ends of each range
    return space


def known_good_params(space: Space) -> dict[str, ConfigValue]:
    """The config's default of every ranged key of ``space`` whose default lies inside its range."""
    out: dict[str, ConfigValue] = {}
    for key, spec in space.params.items():
        if not isinstance(spec, dict):
            continue
        value = getattr(DEFAULT, key)
        if spec["type"] == "categorical":
            if value in spec["choices"]:
                out[key] = value
        elif spec["low"] <= value <= spec["high"]:
            out[key] = value
    return out


def finished_trials(study: optuna.Study) -> int:
    """Trials that ran to an end: complete, pruned, or failed on their own (a killed one does not count, nor
    one whose worker stopped beating and that was queued again)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}  # heartbeat-stale, queued again
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum(t.state in states and not was_killed(t) and t.number not in retried for t in trials)


def open_study(run: Run, storage_url: str | None, *, seed: int, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create or load the ``cnn`` study (maximize validation accuracy)."""
    import optuna

    study = optuna.create_study(
        study_name=STUDY,
        storage=open_storage(run, storage_url, heartbeat=True),
        direction="maximize",
        load_if_exists=True,
        # constant_liar: trials running at once (n_jobs, ensemble worker) do not all sample the same region
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, constant_liar=True),
        pruner=pruner,
    )
    check_run_identity(study, run)
    name_metric(study)
    return study


def check_space(run: Run, space: Space, storage_url: str | None = None) -> None:
    """SpaceError when ``space`` no longer fits the trials of the run's ``cnn`` study (none: nothing to check)."""
    import optuna

    try:
        study = optuna.load_study(study_name=STUDY, storage=open_storage(run, storage_url))
    except KeyError:  # no study yet
        return
    space.check_fits(study, run=run.name)


def run_search(
    run: Run,
    space: Space,
    settings: SearchSettings,
    *,
    storage_url: str | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
    say: Callable[[str], None] = logs.info,
    publish: dict[str, Any] | None = None,
    on_jobs: Callable[[int], None] | None = None,
    pool: TrainerPool | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has ``settings.trials`` finished trials or time runs out.

    ``callbacks`` run after each trial (Optuna's ``optimize`` callbacks; one may ``study.stop()``).
    ``publish``: record in the study what ``ensemble worker`` needs to join (:mod:`.worker`), with these
    fields overridden (e.g. the plan's target); ``None``: don't (a worker itself).
    ``on_jobs``: told how many trials run at once from now on (``settings.jobs``, ramped up when "auto").
    ``pool``: trainers already started (:func:`trainers`, e.g. the one that ran the speed probe); the caller
    closes them. None: this search starts its own and stops them at its end.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    jobs = parse_jobs(settings.jobs)
    if jobs != 1 and not settings.isolate:
        raise UsageError("several trials at once need trainer processes (isolate=True): Keras state is per process")
    epochs = space.defaults().get("epochs", DEFAULT.epochs)
    seed = settings.seed if settings.sampler_seed is None else settings.sampler_seed
    study = open_study(run, storage_url, seed=seed, pruner=pruner or make_pruner(settings.pruner, epochs))
    space.check_fits(study, run=run.name)  # before any trial: a changed space would fail every one
    _prepare(study, run, space, settings, local_storage=storage_url is None, say=say, publish=publish)
    done = finished_trials(study)
    todo = settings.trials - done
    if todo <= 0:
        say(f"Study '{STUDY}' already has {done} finished trial(s) (asked for {settings.trials}); nothing to do.")
        return study
    more = "until the study reaches its target" if settings.trials >= 10**9 else f"up to {todo} more"
    say(f"Study '{STUDY}': {done} finished trial(s) so far, running {more}")
    meter = Meter()
    stops = [_stop_at(settings.trials), *(callbacks or [])]
    quiet_interrupts()  # Ctrl-C: the CLI's one line, not Optuna's traceback
    with contextlib.ExitStack() as stack:
        if pool is None and settings.isolate:
            pool = stack.enter_context(trainers(run, settings, say))
        with on_interrupt(pool.interrupt if pool is not None else None) as stopping:
            objective = make_objective(run, space, settings, say, pool, meter, stopping)

            def search(timeout: float | None) -> None:
                optimize(
                    study,
                    objective,
                    jobs=jobs,
                    pool=pool,
                    meter=meter,
                    n_trials=max(1, settings.trials - finished_trials(study)),  # a cap: other workers' trials count
                    timeout=timeout,
                    say=say,
                    on_jobs=on_jobs,
                    catch=(TrialFailed,),
                    callbacks=stops,
                    gc_after_trial=True,
                )

            # a trial failed by another process while this one was paused is dropped: the search goes on
            optimize_past_takeovers(study, search, timeout=settings.timeout, callbacks=stops, say=say)
    return study


def _prepare(
    study: optuna.Study,
    run: Run,
    space: Space,
    settings: SearchSettings,
    *,
    local_storage: bool,
    say: Callable[[str], None],
    publish: dict[str, Any] | None,
) -> None:
    """Before the trials: queue the known-good first trial of a new study, publish what ``ensemble worker``
    needs, and fail (and clean up) trials left RUNNING by a stopped process."""
    if not study.trials:
        first = known_good_params(space)
        if first:
            study.enqueue_trial(first)
            say("First trial: the known-good defaults of ensemble/search/cnn/model.py (inside the space), then TPE")
    if publish is not None:
        epochs = settings.epochs() if callable(settings.epochs) else settings.epochs
        spec = {"target": settings.trials, "count": "finished", "epochs": epochs, "pruner": settings.pruner, **publish}
        same = {"seed": settings.seed, "max_train": settings.max_train, "mixed_precision": settings.mixed_precision}
        worker_spec.publish(study, space, **spec, **same)
    stale = fail_stale_trials(study, run.root, local_storage=local_storage)
    for number in stale:  # killed mid-trial: drop whatever it wrote
        discard(trial_path(run, STUDY, number))
    if stale:
        say(f"Marked {len(stale)} trial(s) left RUNNING by a stopped process as FAIL: {stale}")


@contextlib.contextmanager
def trainers(run: Run, settings: SearchSettings, say: Callable[[str], None] = logs.info) -> Iterator[TrainerPool]:
    """The trainer processes of a search with ``settings`` (its arrays written for them); stopped at the end."""
    arrays_path = write_arrays(run, max_train=settings.max_train, seed=settings.seed)
    pool = None
    try:
        pool = _pool(run, settings, arrays_path, parse_jobs(settings.jobs), say)
        yield pool
    finally:
        if pool is not None:
            pool.close()
        arrays_path.unlink(missing_ok=True)


def _pool(
    run: Run, settings: SearchSettings, arrays_path: Path, jobs: int | str, say: Callable[[str], None]
) -> TrainerPool:
    """The trainer processes of this search, ``jobs`` on each device (started as trials need them); JAX shares a
    compilation cache."""
    devices = select(settings.devices)
    most = AUTO_MAX if jobs == "auto" else int(jobs)
    say(f"devices: {devices.describe()}; trials at once per device: {jobs}")
    cache = run.path(".cache", "jax-compile") if cnn.backend_name() == "jax" else None
    limits = TrainerLimits(recycle_after=settings.recycle_after, trainers=most, compile_cache=cache and str(cache))
    return TrainerPool(arrays_path, 1 if jobs == "auto" else most, limits, devices.devices)


def _stop_at(target: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop once the study (all processes together) has ``target`` finished trials."""

    def callback(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if finished_trials(study) >= target:
            study.stop()

    return callback
