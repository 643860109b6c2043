"""Stale-trial detection: trials of dead processes are failed (and flagged), live ones never."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ensemble.locks import worker_token
from ensemble.search.storage import driver_error, fail_stale_trials, mark_owner, redact, was_killed

LIVE_WORKER = """
import sys, time
from pathlib import Path
from ensemble.locks import worker_token
print(worker_token(Path(sys.argv[1])), flush=True)
time.sleep(120)
"""


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    return optuna.create_study(study_name="cnn", storage=storage)


@pytest.fixture
def other_worker(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", LIVE_WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    token = proc.stdout.readline().strip()
    yield proc, token
    proc.kill()
    proc.wait()


def _running(study: optuna.Study) -> list[int]:
    return [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]


def test_untagged_trial_is_left_alone_while_another_worker_lives(study, tmp_path: Path, other_worker) -> None:
    study.ask()  # what another process's trial looks like between Optuna's ask and its tag
    assert fail_stale_trials(study, tmp_path) == [] and _running(study) == [0]
    proc, _ = other_worker
    proc.kill()
    proc.wait()
    assert fail_stale_trials(study, tmp_path) == [0]  # now no live worker can own it
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.FAIL and was_killed(t)


def test_untagged_trial_in_a_remote_storage_is_left_alone(study, tmp_path: Path) -> None:
    study.ask()
    assert fail_stale_trials(study, tmp_path, local_storage=False) == []


def test_tagged_trials_live_or_dead(study, tmp_path: Path, other_worker) -> None:
    _, token = other_worker
    mine = study.ask()
    mark_owner(mine, tmp_path)
    theirs = study.ask()
    theirs.set_user_attr("worker", token)
    dead = study.ask()
    dead.set_user_attr("worker", token.rsplit("-", 1)[0] + "-0000dead")  # same host and pid, other token
    remote = study.ask()
    remote.set_user_attr("worker", "elsewhere-42-abcd")
    assert fail_stale_trials(study, tmp_path) == [dead.number]
    assert _running(study) == [mine.number, theirs.number, remote.number]
    assert mine.user_attrs["worker"] == worker_token(tmp_path)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:s3cret@db:5432/optuna", "postgresql://user:***@db:5432/optuna"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_printed_commands_never_show_a_password(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ensemble.search.storage import dashboard_command, optuna_cli_args

    run = SimpleNamespace(path=lambda *parts: tmp_path.joinpath(*parts))
    url = "postgresql://alice:s3cret@db.example:5432/ensemble"
    for line in (dashboard_command(run, url), optuna_cli_args(run, url)):  # type: ignore[arg-type]
        assert "s3cret" not in line and "alice:***@db.example" in line
    assert str(tmp_path / "optuna.journal") in dashboard_command(run)  # type: ignore[arg-type]


def test_the_dashboard_command_carries_the_artifact_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex
    from types import SimpleNamespace

    from ensemble.search.artifacts import ARTIFACTS_ENV
    from ensemble.search.storage import dashboard_command

    run = SimpleNamespace(path=lambda *parts: tmp_path.joinpath(*parts))
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    assert "--artifact-dir" not in dashboard_command(run)  # type: ignore[arg-type]
    store = str(tmp_path / "shared store")
    line = dashboard_command(run, None, store)  # type: ignore[arg-type]
    assert shlex.split(line) == ["optuna-dashboard", str(tmp_path / "optuna.journal"), "--artifact-dir", store]
    monkeypatch.setenv(ARTIFACTS_ENV, store)  # --artifacts puts it there for the whole command
    url = "postgresql://alice:s3cret@db.example/ensemble"
    line = dashboard_command(run, url)  # type: ignore[arg-type]
    assert shlex.split(line) == ["optuna-dashboard", url.replace("s3cret", "***"), "--artifact-dir", store]
    grpc = dashboard_command(run, "grpc://127.0.0.1:13000")  # type: ignore[arg-type]
    assert grpc.startswith(f"optuna-dashboard DATABASE_URL --artifact-dir {shlex.quote(store)} (")
    # optuna-dashboard's --artifact-dir takes a local folder only: an S3 bucket goes through a TOML config
    s3 = dashboard_command(run, url, "s3://my-bucket")  # type: ignore[arg-type]
    assert "--artifact-dir" not in s3 and "--from-config dashboard.toml" in s3
    assert '[artifact_store.boto3] bucket_name = "my-bucket"' in s3


def test_in_a_shared_storage_each_trial_is_judged_by_the_token_in_its_own_run_folder(study, tmp_path: Path) -> None:
    """Two run folders on one host share a storage: a live worker of folder B is not failed by folder A,
    and a dead one of folder B is."""
    folder_b = tmp_path / "b"
    folder_b.mkdir()
    live = subprocess.Popen([sys.executable, "-c", LIVE_WORKER, str(folder_b)], stdout=subprocess.PIPE, text=True)
    dead = subprocess.Popen([sys.executable, "-c", LIVE_WORKER, str(folder_b)], stdout=subprocess.PIPE, text=True)
    try:
        tokens = [p.stdout.readline().strip() for p in (live, dead)]  # type: ignore[union-attr]
        dead.kill()
        dead.wait()
        trials = []
        for token in tokens:
            t = study.ask()
            t.set_user_attr("run_root", str(folder_b.resolve()))
            t.set_user_attr("worker", token)
            trials.append(t.number)
        folder_a = tmp_path / "a"
        assert fail_stale_trials(study, folder_a, local_storage=False) == [trials[1]]
        assert _running(study) == [trials[0]]
    finally:
        live.kill()
        live.wait()


def test_a_driver_error_is_one_line_with_the_password_hidden() -> None:
    url = "postgresql://ensemble:s3cret@db.example:5432/ensemble"
    exc = RuntimeError(f"could not connect to {url}\n  timeout " + "x" * 2000 + "\n(Background on this error at: ...)")
    text = driver_error(exc)
    assert "s3cret" not in text and "ensemble:***@db.example" in text
    assert "\n" not in text and "Background" not in text
    assert text.endswith("x" * 2000)  # nothing is cut
