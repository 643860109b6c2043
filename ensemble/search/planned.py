"""The CNN search of ``ensemble run`` as the budget plans it (see :mod:`ensemble.search.plan`).

Before the first trial the training speed is measured (:func:`ensemble.search.cnn.trainer.probe_speed`),
the plan (members x epochs, and the time their refits will need) is printed, and every trial then
trains the planned number of epochs, so the one-cycle or cosine schedule spans them. After each
trial the plan is revised from the time left and the speed the trial measured; the study stops
once the planned members are trained. The time reserved for the refits moves the search deadline
earlier, which the deadline pruner follows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from ensemble.search.artifacts import CNN_STUDY
from ensemble.search.cnn import spec as worker_spec
from ensemble.search.cnn.config import CnnConfig
from ensemble.search.plan import Plan, PlanSettings, Workload, make_plan, revise

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run


class PlanRecord(TypedDict):
    """One revision of the plan, as ``stages.json`` records it."""

    why: str
    members: int
    epochs: int
    images_per_second: int
    refit_images_per_second: int
    at_once: int
    at: int


@dataclass
class PlannedSearch:
    """The plan of one invocation and the deadline it implies for the search (moves as the plan changes)."""

    plan: Plan
    work: Workload  # its ``parallel``: trials that run at once (the search tells: see set_jobs)
    end: float  # searches and refits must be done by then
    log: Callable[[str], None]
    history: list[PlanRecord] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        """When the CNN search must stop: the end less the time the planned refits need."""
        return self.end - self.plan.refit_seconds

    def record(self, why: str) -> None:
        p = self.plan
        self.history.append(
            {
                "why": why,
                "members": p.members,
                "epochs": p.epochs,
                "images_per_second": round(p.images_per_second),
                "refit_images_per_second": round(p.refit_images_per_second),
                "at_once": p.parallel,
                "at": round(time.time()),
            }
        )
        self.log(f"plan ({why}): {p.describe()}")

    def set_jobs(self, jobs: int) -> None:
        """From now on ``jobs`` trials run at once: the next revisions plan for it."""
        self.work = dataclasses.replace(self.work, parallel=jobs)

    def callback(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: revise with the measured speed; stop when the planned members are trained."""
        import optuna

        attrs = trial.user_attrs  # the speed at the trial's end: the baselines may have slowed its start
        ips = float(
            attrs.get("recent_images_per_second") or attrs.get("images_per_second") or self.plan.images_per_second
        )
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        left = self.end - time.time()
        self.plan = revise(self.plan, done=done, seconds_left=left, images_per_second=ips, work=self.work)
        self.record(f"after trial {trial.number}")
        worker_spec.update(study, target=self.plan.members, epochs=self.plan.epochs)  # what ensemble worker reads
        if done >= self.plan.members:  # members are completed trainings: a pruned trial is not one
            study.stop()


def plan_search(
    run: Run,
    config: CnnConfig,
    *,
    settings: PlanSettings,
    max_train: int | None,
    end: float,
    log: Callable[[str], None],
    previous: dict[str, int] | None = None,
    storage_url: str | None = None,
    probe: Callable[[CnnConfig, int], float] | None = None,
) -> PlannedSearch:
    """Measure the speed of ``config`` here, now, and plan the members that fit until ``end``.

    ``settings``: the preset's (``refit`` and ``max_members`` included); ``max_train``: rows the CNNs train on.
    ``previous``: the plan an interrupted invocation of this run recorded; its epoch count is kept
    (members of one ensemble train alike) and the members it already trained count.
    ``probe(config, images)``: measures the speed (the search's first trainer:
    :meth:`ensemble.search.cnn.pool.TrainerPool.probe`); None: a process of its own.
    """
    from ensemble.search.cnn.trainer import probe_speed

    x, y = run.part("train")
    if max_train:
        x, y = x[:max_train], y[:max_train]
    t0 = time.time()
    images = min(4096, len(y))
    ips = probe(config, images) if probe is not None else probe_speed(config, x, y, images=images)
    log(f"measured {ips:,.0f} training images/s ({time.time() - t0:.0f}s probe)")
    work = Workload(n_train=len(y), n_all=len(run.dataset.y_train), settings=settings)
    left = max(0.0, end - time.time())
    plan = make_plan(left, images_per_second=ips, work=work)
    done = _completed(run, storage_url)
    if previous and done:
        plan = dataclasses.replace(plan, epochs=int(previous["epochs"]))
        plan = revise(plan, done=done, seconds_left=left, images_per_second=ips, work=work)
    planned = PlannedSearch(plan, work, end, log)
    planned.record("start" if not done else f"resumed with {done} member(s) trained")
    return planned


def _completed(run: Run, storage_url: str | None) -> int:
    """COMPLETE trials of the run's CNN study so far (0 when it has none yet)."""
    import optuna

    from ensemble.search.storage import open_storage

    try:
        study = optuna.load_study(study_name=CNN_STUDY, storage=open_storage(run, storage_url))
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
