"""The CNN search stage of ``ensemble run``: the ``cnn`` study, bounded by a deadline and the budget's plan."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run
    from ensemble.pipeline.presets import Preset
    from ensemble.search.cnn.pool import TrainerPool
    from ensemble.search.planned import PlannedSearch, PlanRecord
    from ensemble.search.spaces import Space


def deadline_pruner(
    inner: optuna.pruners.BasePruner, deadline: float | Callable[[], float], epochs: int, log: Callable[[str], None]
) -> optuna.pruners.BasePruner:
    """Wrap ``inner``: prune (and stop the study) once a trial would end past ``deadline``.

    A trial is pruned at an epoch end when the deadline has passed, or when its projected end
    (time per epoch so far x epochs left) is past the deadline and the study already has a
    completed trial (so stopping loses nothing that a report needs).
    """
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    when = deadline if callable(deadline) else (lambda: deadline)

    class DeadlinePruner(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            now, deadline = time.time(), when()
            if trial.intermediate_values and trial.datetime_start is not None:
                done = max(trial.intermediate_values)
                per_epoch = (now - trial.datetime_start.timestamp()) / max(done, 1)
                total = int(trial.params.get("epochs", trial.user_attrs.get("epochs", epochs)))
                projected = now + per_epoch * max(0, total - done)
                has_model = bool(study.get_trials(deepcopy=False, states=(complete,)))
                if now >= deadline or (has_model and projected > deadline):
                    why = "time share used up" if now >= deadline else f"would end {projected - deadline:.0f}s late"
                    log(f"trial {trial.number}: stopping the search at epoch {done} ({why})")
                    study.stop()
                    return True
            return inner.prune(study, trial)

    return DeadlinePruner()


@dataclass(frozen=True)
class SearchOutcome:
    """What the CNN search stage records in stages.json: trials by state, whether the budget cut it short."""

    trials: dict[str, int]
    cut_short: bool
    plan: list[PlanRecord] | None = None  # the plan's revisions, when the budget planned the search

    def as_record(self) -> dict[str, object]:
        record: dict[str, object] = {"trials": self.trials, "cut_short": self.cut_short}
        return record if self.plan is None else {**record, "plan": self.plan}


@dataclass(frozen=True)
class _Bounds:
    """What ends a CNN search: the budget's plan (revised as trials finish) or the preset's trial count."""

    first_epochs: int  # the pruner's epochs for a trial that records none
    deadline: Callable[[], float]
    epochs: Callable[[], int] | None  # every trial's epochs (the plan's), else the space's
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]]
    publish: dict[str, object]  # what ``ensemble worker`` reads from the study
    on_jobs: Callable[[int], None] | None
    cut_short: Callable[[optuna.Study], bool]
    plan: PlannedSearch | None


def _fixed_bounds(s: Preset, space: Space, deadline: float) -> _Bounds:
    from ensemble.search.cnn.study import finished_trials

    return _Bounds(
        first_epochs=int(space.defaults().get("epochs", 1)),
        deadline=lambda: deadline,
        epochs=None,
        callbacks=[],
        publish={},
        on_jobs=None,
        cut_short=lambda study: finished_trials(study) < s.cnn_trials,
        plan=None,
    )


def _planned_bounds(planned: PlannedSearch) -> _Bounds:
    import optuna

    def cut_short(study: optuna.Study) -> bool:  # fewer members trained than the (revised) plan has
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return len(complete) < max(1, planned.plan.members)

    return _Bounds(
        first_epochs=planned.plan.epochs,
        deadline=lambda: planned.deadline,
        epochs=lambda: planned.plan.epochs,
        callbacks=[planned.callback],
        publish={"target": planned.plan.members, "count": "complete"},
        on_jobs=planned.set_jobs,
        cut_short=cut_short,
        plan=planned,
    )


def cnn_search(
    run: Run,
    s: Preset,
    deadline: float,
    log: Callable[[str], None],
    storage_url: str | None,
    planned: PlannedSearch | None = None,
    pool: TrainerPool | None = None,
) -> SearchOutcome:
    """Run or continue the ``cnn`` study until its trial count (or the budget's plan) or its deadline.

    With a plan, the study stops once the planned members are trained (``s.cnn_trials`` stays a cap).
    """
    import optuna

    from ensemble.search.cnn import study as search

    space_path, space = cnn_space(s)
    bounds = _fixed_bounds(s, space, deadline) if planned is None else _planned_bounds(planned)
    mixed = s.mixed_precision
    if mixed == "auto":
        from ensemble.search.cnn import model as cnn

        mixed = cnn.device_name() == "gpu"
    settings = search.SearchSettings(
        mixed_precision=bool(mixed),
        trials=s.cnn_trials,
        timeout=max(1.0, deadline - time.time()),
        pruner=s.pruner,
        seed=s.seed,
        max_train=s.max_train,
        epochs=bounds.epochs,
        jobs=s.trials_per_device,
        devices=s.devices,
    )
    pruner = deadline_pruner(
        search.make_pruner(s.pruner, bounds.first_epochs), bounds.deadline, bounds.first_epochs, log
    )
    log(f"space {space_path}: up to {settings.trials} trials, stops starting new ones at the deadline")
    study = search.run_search(
        run,
        space,
        settings,
        storage_url=storage_url,
        pruner=pruner,
        callbacks=bounds.callbacks,
        say=log,
        publish=bounds.publish,
        on_jobs=bounds.on_jobs,
        pool=pool,
    )
    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {k.name.lower(): states.count(k) for k in optuna.trial.TrialState if states.count(k)}
    history = None if bounds.plan is None else bounds.plan.history
    return SearchOutcome(trials=count, cut_short=bounds.cut_short(study), plan=history)


def cnn_space(s: Preset) -> tuple[Path, Space]:
    from ensemble.search.cnn import study as search
    from ensemble.search.spaces import space_file

    space_path = space_file(s.space)  # a shipped name (the presets) or a path (--set space=FILE)
    return space_path, search.load_cnn_space(space_path)
