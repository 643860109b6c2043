"""``ensemble status``: a run's stages, plan and leaderboard so far, read without its writer lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ensemble.cli import main
from ensemble.data.runs import Run, open_run
from ensemble.pipeline.state import Stages
from ensemble.pipeline.status import PlanStatus, StudyStatus, run_status
from ensemble.search.cnn.spec import SPEC_ATTR
from ensemble.search.storage import open_storage

State = optuna.trial.TrialState


def _trial(study: optuna.Study, state: optuna.trial.TrialState, value: float | None = None) -> None:
    study.add_trial(optuna.trial.create_trial(state=state, value=value))


def fill(run: Run, url: str | None = None) -> None:
    """A run halfway through ``ensemble run``: data and baselines done, the CNN search going."""
    stages = Stages(run.path("stages.json"))  # written as the pipeline writes it
    stages.finish("data", 1.5)
    stages.note(preset="quick", budget_seconds=1680.0, plan={"members": 4, "epochs": 12})
    stages.finish("baselines", 30.0, stopped_at_deadline=True)
    storage = open_storage(run, url)
    cnn = optuna.create_study(study_name="cnn", storage=storage, direction="maximize")
    for state, value in ((State.COMPLETE, 0.91), (State.COMPLETE, 0.95), (State.PRUNED, None), (State.FAIL, None)):
        _trial(cnn, state, value)
    cnn.ask()  # a trial being trained
    cnn.set_user_attr(SPEC_ATTR, {"target": 3, "epochs": 10})  # the plan as revised after the last trial
    knn = optuna.create_study(study_name="baseline-knn", storage=storage, direction="maximize")
    _trial(knn, State.COMPLETE, 0.80)
    knn.enqueue_trial({})
    optuna.create_study(study_name="baseline-svm", storage=storage, direction="maximize").ask()


@pytest.fixture
def run(runs_env: Path, dataset: Path) -> Run:
    return open_run("st", data=dataset, say=lambda s: None)


def test_the_stages_the_plan_and_the_leaderboard_so_far(run: Run) -> None:
    fill(run)
    got = run_status("st")
    assert (got.preset, got.budget_seconds, got.storage) == ("quick", 1680.0, str(run.path("optuna.journal")))
    stages = {s.name: s for s in got.stages}
    assert [s.name for s in got.stages][:3] == ["data", "cnn_search", "baselines"]  # the pipeline's order
    assert stages["data"].done and stages["data"].seconds == 1.5
    assert stages["baselines"].done and "stopped at deadline" in stages["baselines"].note
    assert not stages["cnn_search"].done and stages["cnn_search"].seconds is None
    assert got.plan == PlanStatus(3, 10, "revised as the search goes")  # the study's, not the first plan
    counts = dict(complete=0, running=0, waiting=0, pruned=0, failed=0)
    assert got.leaderboard == (
        StudyStatus("cnn", 1, 0.95, **{**counts, "complete": 2, "running": 1, "pruned": 1, "failed": 1}),
        StudyStatus("baseline-knn", 0, 0.80, **{**counts, "complete": 1, "waiting": 1}),
        StudyStatus("baseline-svm", None, None, **{**counts, "running": 1}),  # nothing finished yet: last
    )
    history = [{"why": "start", "members": 4, "epochs": 12}, {"why": "after trial 1", "members": 2, "epochs": 12}]
    Stages(run.path("stages.json")).finish("cnn_search", 60.0, trials={"complete": 2}, plan=history)
    got = run_status("st")
    assert got.plan == PlanStatus(2, 12, "after trial 1")  # the search's last revision
    assert next(s for s in got.stages if s.name == "cnn_search").note == "2 complete"


def test_status_works_while_another_process_holds_the_runs_writer_lock(run: Run, runs_env: Path, capsys) -> None:
    fill(run)
    code = (
        "import time\nfrom pathlib import Path\nfrom ensemble.locks import run_lock\n"
        f"with run_lock(Path({str(runs_env)!r}), 'st'):\n    print('locked', flush=True)\n    time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["report", "--run", "st"]) == 2  # a writer is refused: the lock is held
        assert "in use by pid" in capsys.readouterr().err
        assert main(["status", "--run", "st"]) == 0
    finally:
        holder.kill()
        holder.wait()
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    assert ["1", "cnn", "1", "0.9500", "2", "1", "0", "1", "1"] in rows
    assert ["2", "baseline-knn", "0", "0.8000", "1", "0", "1", "0", "0"] in rows
    assert ["cnn_search", "no"] in rows and any(r[:3] == ["data", "yes", "1.5"] for r in rows)
    assert "CNN plan: 3 member(s) x 10 epochs" in out and "preset quick" in out


def test_a_run_in_a_shared_database_is_read_through_its_own_names(run: Run, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    fill(run, url)
    optuna.create_study(study_name="other.cnn", storage=url, direction="maximize")  # another run's study
    got = run_status("st", storage_url=url)
    assert [r.study for r in got.leaderboard] == ["cnn", "baseline-knn", "baseline-svm"]
    assert got.leaderboard[0].val_accuracy == 0.95 and got.storage == url


def test_a_run_without_studies_yet_is_read_and_left_as_it_was(run: Run) -> None:
    before = sorted(p.name for p in run.root.iterdir())
    got = run_status("st")
    assert got.leaderboard == () and got.plan is None and not any(s.done for s in got.stages)
    assert sorted(p.name for p in run.root.iterdir()) == before  # no journal file, no stages.json written


def test_a_missing_run_is_a_one_line_error(runs_env: Path, capsys) -> None:
    assert main(["status", "--run", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nope'") and len(err.strip().splitlines()) == 1
    assert not (runs_env / "nope").exists()
