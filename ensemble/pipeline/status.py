"""Where a run stands, read without its writer lock (``ensemble status``): stages, plan, leaderboard so far.

Everything here only reads: ``runs/NAME/stages.json`` (written atomically) and the run's Optuna storage
(the journal file is read without its lock; Optuna's reader tolerates a writer appending). So it works
while ``ensemble run``, ``search`` or ``worker`` are writing, and never fails or retries their trials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.data.runs import RunFolder
from ensemble.errors import UsageError
from ensemble.pipeline.presets import STAGES

if TYPE_CHECKING:
    import optuna

#: What a stage's entry in stages.json holds besides its outcome, as ``note`` shows it.
_KNOWN = ("done", "seconds", "finished", "plan")


@dataclass(frozen=True)
class StageStatus:
    """One stage of ``ensemble run``: done or not, its seconds, when it finished, and a short note."""

    name: str
    done: bool
    seconds: float | None = None
    finished: str | None = None
    note: str = ""


@dataclass(frozen=True)
class PlanStatus:
    """The CNN plan: ``members`` trainings of ``epochs`` epochs; ``why``: which revision it is."""

    members: int
    epochs: int
    why: str
    images_per_second: float | None = None


@dataclass(frozen=True)
class StudyStatus:
    """One study (``cnn``, ``baseline-FAMILY``) so far: its best finished trial and its trials by state."""

    study: str
    best_trial: int | None
    val_accuracy: float | None
    complete: int
    running: int
    waiting: int  # queued: a known-good first trial, a killed trial to run again
    pruned: int
    failed: int


@dataclass(frozen=True)
class RunStatus:
    """A run as ``ensemble status`` shows it. ``leaderboard``: the studies, best validation accuracy first."""

    name: str
    root: Path
    storage: str  # the journal path or the URL, password hidden
    preset: str | None
    budget_seconds: float | None
    wall_seconds: float | None
    stages: tuple[StageStatus, ...]
    plan: PlanStatus | None
    leaderboard: tuple[StudyStatus, ...]


def run_status(name: str, storage_url: str | None = None) -> RunStatus:
    """Read where run ``name`` stands; UsageError when ``runs/NAME`` does not exist. Takes no lock."""
    from ensemble.data.runs import run_root
    from ensemble.io import read_json
    from ensemble.search.storage import storage_location
    from ensemble.search.urls import redact

    root = run_root(name)
    if not root.is_dir():
        raise UsageError(f"no run '{name}': {root} does not exist (start one with: ensemble run --run {name})")
    path = root / "stages.json"
    data: dict[str, Any] = read_json(path) if path.is_file() else {}
    folder = RunFolder(name, root)
    studies = _read_studies(folder, storage_url)
    return RunStatus(
        name=name,
        root=root,
        storage=redact(storage_location(folder, storage_url)),  # type: ignore[arg-type]
        preset=data.get("preset"),
        budget_seconds=data.get("budget_seconds"),
        wall_seconds=data.get("wall_seconds"),
        stages=stage_rows(data.get("stages") or {}),
        plan=current_plan(data, studies.get("cnn")),
        leaderboard=leaderboard(studies),
    )


def stage_rows(entries: Mapping[str, object]) -> tuple[StageStatus, ...]:
    """The stages of ``ensemble run`` in order (and any other recorded), done or not (stages.json's ``stages``)."""
    names = list(STAGES) + [n for n in entries if n not in STAGES]
    rows = []
    for name in names:
        entry = _mapping(entries.get(name))
        seconds, finished = entry.get("seconds"), entry.get("finished")
        rows.append(
            StageStatus(
                name=name,
                done=bool(entry.get("done")),
                seconds=seconds if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None,
                finished=finished if isinstance(finished, str) else None,
                note=_note(entry),
            )
        )
    return tuple(rows)


def _mapping(value: object) -> Mapping[str, object]:
    """A JSON object of stages.json (anything else, a missing one included: empty)."""
    return value if isinstance(value, dict) else {}


def _note(entry: Mapping[str, object]) -> str:
    """A stage's extra fields in a few words: ``skipped: ...``, ``cut short``, ``2 complete``, ``members 4``."""
    words = []
    for key, value in entry.items():
        if key in _KNOWN or value in (None, False, [], {}):
            continue
        if key == "skipped":
            words.append(f"skipped: {value}")
        elif key in ("cut_short", "stopped_at_deadline") and value is True:
            words.append(key.replace("_", " "))
        elif isinstance(value, dict):
            words.append(", ".join(f"{v} {k}" for k, v in value.items()))
        elif isinstance(value, list):
            words.append(f"{key.replace('_', ' ')} {len(value)}")
        else:
            words.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(words)


def current_plan(data: Mapping[str, object], cnn: optuna.Study | None) -> PlanStatus | None:
    """The CNN plan of ``ensemble run`` (None for a run without one): the last revision the search recorded
    in stages.json; while the search runs, the study's target (revised after each trial); else the first plan."""
    from ensemble.search.cnn.spec import SPEC_ATTR

    first = data.get("plan")
    if not isinstance(first, dict):
        return None
    history = _mapping(_mapping(data.get("stages")).get("cnn_search")).get("plan")
    if isinstance(history, list) and history:
        last = _mapping(history[-1])
        return PlanStatus(int(last["members"]), int(last["epochs"]), str(last["why"]), last.get("images_per_second"))
    spec = cnn.user_attrs.get(SPEC_ATTR) if cnn is not None else None
    if isinstance(spec, dict) and isinstance(spec.get("target"), int) and isinstance(spec.get("epochs"), int):
        return PlanStatus(spec["target"], spec["epochs"], "revised as the search goes")
    return PlanStatus(int(first["members"]), int(first["epochs"]), "start")


def _read_studies(folder: RunFolder, storage_url: str | None) -> dict[str, optuna.Study]:
    """The run's studies by name, opened read-only: no journal file is created, no stale trial is failed."""
    import optuna

    from ensemble.search.artifacts import is_run_study
    from ensemble.search.storage import JOURNAL_NAME, connect

    if storage_url:
        from ensemble.search.scoped import scoped

        storage: optuna.storages.BaseStorage = scoped(connect(storage_url), folder.name)
    else:
        journal = folder.path(JOURNAL_NAME)
        if not journal.is_file():
            return {}
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    names = sorted(s.study_name for s in storage.get_all_studies() if is_run_study(s.study_name))
    return {n: optuna.load_study(study_name=n, storage=storage) for n in names}


def leaderboard(studies: dict[str, optuna.Study]) -> tuple[StudyStatus, ...]:
    """Each study's best COMPLETE trial and its trial counts, best validation accuracy first (none yet: last)."""
    import optuna

    state = optuna.trial.TrialState
    rows = []
    for name, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == state.COMPLETE and t.value is not None]
        best = max(done, key=lambda t: (t.value, -t.number), default=None)
        count = {s: sum(t.state == s for t in trials) for s in state}
        rows.append(
            StudyStatus(
                study=name,
                best_trial=best.number if best else None,
                val_accuracy=float(best.value) if best and best.value is not None else None,
                complete=count[state.COMPLETE],
                running=count[state.RUNNING],
                waiting=count[state.WAITING],
                pruned=count[state.PRUNED],
                failed=count[state.FAIL],
            )
        )
    return tuple(sorted(rows, key=lambda r: (r.val_accuracy is None, -(r.val_accuracy or 0.0), r.study)))
