"""``ensemble worker``: another machine joins a run's CNN study and trains trials until the study's target.

The process that starts the study (``ensemble search`` or ``ensemble run`` with a database storage)
publishes what a worker needs in the study's user attrs (:mod:`.spec`): the search space's YAML text,
the target (finished trials for ``search``; completed members of the budget's plan for ``run``, kept
up to date as the plan is revised), the epochs every trial trains, and the seed, ``max_train`` and
precision the trials train with. A worker checks every field (nothing read from the storage becomes a
path or a file), refuses a spec written by another ensemble version, opens the same run (its data must
have the same fingerprint and split: :func:`ensemble.search.storage.check_run_identity`), samples with
its own seed, and stops once the study, all workers together, reaches the target.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ensemble import logs
from ensemble.errors import UsageError
from ensemble.search.cnn.spec import SPEC_ATTR, Spec, read

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run
    from ensemble.search.cnn.objective import SearchSettings


UNTIL_TARGET = 10**9  # a worker's own trial cap: none (the study's target, read after each trial, stops it)


def worker_seed() -> int:
    """A sampling seed of this host and process: two workers never draw the same trials."""
    digest = hashlib.sha256(f"{os.uname().nodename}-{os.getpid()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _reached(study: optuna.Study, spec: Spec) -> bool:
    import optuna

    from ensemble.search.cnn.study import finished_trials

    if spec.count == "complete":
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    else:
        done = finished_trials(study)
    return done >= spec.target


def worker_settings(
    spec: Spec, *, timeout: float | None, jobs: int | str, epochs: Callable[[], int | None], devices: str = "all"
) -> SearchSettings:
    """What this worker trains with: the run's settings from ``spec``, its own sampler seed and its own jobs.

    ``epochs``: the plan's current epochs, read as each trial starts.
    """
    from ensemble.search.cnn.objective import SearchSettings

    return SearchSettings(
        trials=UNTIL_TARGET,
        timeout=timeout,
        pruner=spec.pruner,
        seed=spec.seed,  # the run's: the same rows (max_train) and trial seeds as on its first machine
        sampler_seed=worker_seed(),
        max_train=spec.max_train,
        mixed_precision=spec.mixed_precision,
        epochs=epochs,  # type: ignore[arg-type]
        jobs=jobs,
        devices=devices,
    )


def join(
    run: Run,
    storage_url: str,
    *,
    timeout: float | None = None,
    say: Callable[[str], None] = logs.info,
    jobs: int | str = 1,
    devices: str = "all",
) -> int:
    """Train trials of run ``run``'s CNN study until it reaches its target; returns the trials this worker ran.

    ``jobs``: trials at once per device on this machine (see :mod:`ensemble.search.cnn.parallel`);
    ``devices``: which of this machine's devices (:mod:`ensemble.search.devices`).
    """
    import optuna

    from ensemble.locks import worker_token
    from ensemble.search.cnn.study import STUDY, run_search
    from ensemble.search.storage import check_run_identity, open_storage

    storage = open_storage(run, storage_url)
    if STUDY not in optuna.get_all_study_names(storage=storage):
        raise UsageError(
            f"run '{run.name}' has no CNN study in that storage yet: start it with ensemble run or "
            "ensemble search --storage on the first machine"
        )
    study = optuna.load_study(study_name=STUDY, storage=storage)
    check_run_identity(study, run)
    spec = read(study.user_attrs.get(SPEC_ATTR), run=run.name)  # checked: the storage is not trusted
    if _reached(study, spec):
        say(f"run '{run.name}': the CNN study already has its {spec.target} trial(s); nothing to do")
        return 0

    def current() -> Spec:  # Study.user_attrs reads the storage on every access: the spec as it is now
        return read(study.user_attrs.get(SPEC_ATTR), run=run.name)

    def stop_when_reached(s: optuna.Study, _t: optuna.trial.FrozenTrial) -> None:
        if _reached(s, current()):
            s.stop()

    settings = worker_settings(spec, timeout=timeout, jobs=jobs, epochs=lambda: current().epochs, devices=devices)
    say(
        f"worker: joining run '{run.name}' (target {spec.target} {spec.count} trial(s)), "
        f"sampler seed {settings.sampler_seed}"
    )
    study = run_search(
        run, spec.space, settings, storage_url=storage_url, callbacks=[stop_when_reached], say=say, publish=None
    )
    mine = worker_token(run.root)
    return sum(t.user_attrs.get("worker") == mine for t in study.get_trials(deepcopy=False))
