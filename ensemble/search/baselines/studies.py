"""The baseline studies as a whole: created or loaded (trials killed mid-fit failed), the refits still to
run, and each study's summary. One trial of a study: :mod:`.study`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ensemble.search.artifacts import name_metric, partial_trial_path, trial_path
from ensemble.search.baselines.models import Family
from ensemble.search.baselines.spaces import first_params
from ensemble.search.baselines.study import Parts, Task
from ensemble.search.spaces import Space
from ensemble.search.storage import fail_stale_trials, open_storage

if TYPE_CHECKING:
    import optuna


def ensure_studies(parts: Parts, families: Iterable[Family], spaces: dict[str, Space], storage: str | None) -> dict:
    """Create (or load) one maximize study per family; a fresh study first tries the space's defaults.

    SpaceError, before any study changes, when a space no longer fits its study's trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(parts, storage)
    families = list(families)
    studies = {}
    for fam in families:
        study = optuna.create_study(study_name=fam.study_name, storage=st, direction="maximize", load_if_exists=True)
        spaces[fam.name].check_fits(study, run=parts.name)
        studies[fam.name] = study
    for fam in families:  # every space fits its study: only now is any study changed
        study = studies[fam.name]
        name_metric(study)
        if not study.trials:
            study.enqueue_trial(first_params(spaces[fam.name]), user_attrs={"stage": "search"})
        for number in fail_stale_trials(study, parts.root, local_storage=storage is None):  # killed mid-fit
            shutil.rmtree(partial_trial_path(parts, fam.study_name, number), ignore_errors=True)
            shutil.rmtree(trial_path(parts, fam.study_name, number), ignore_errors=True)
    return studies


def refit_tasks(studies: dict, spaces: dict[str, Space], parts: Parts, make: Callable[..., Task]) -> list[Task]:
    """One refit per family whose best search trial used a subsample and has no completed refit yet.

    Sorted by estimated cost (the best trial's seconds scaled by the row ratio), longest first.
    """
    import optuna

    tasks, cost = [], {}
    for name, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        search = [t for t in done if t.user_attrs.get("stage", "search") == "search"]
        if not search:
            continue
        best = max(search, key=lambda t: t.value)
        if best.user_attrs.get("n_train", 0) >= len(parts.y_train):
            continue
        if any(t.user_attrs.get("refit_of") == best.number for t in done):
            continue
        tasks.append(make(name, refit_of=best.number, refit_params=dict(best.params)))
        seconds = best.user_attrs.get("fit_seconds", 0) + best.user_attrs.get("predict_seconds", 0)
        cost[name] = seconds * len(parts.y_train) / max(1, best.user_attrs.get("n_train", 1))
    return sorted(tasks, key=lambda t: -cost[t.family])  # longest first, so the slowest refit starts at once


def family_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts and best trial of one study."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    return {
        "complete": len(done),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "best": best,
        "compute_s": sum(t.user_attrs.get("fit_seconds", 0) + t.user_attrs.get("predict_seconds", 0) for t in done),
    }
