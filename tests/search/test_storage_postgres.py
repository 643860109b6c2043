"""The run's studies in a real PostgreSQL server (a throwaway one, see tests/postgres.py): no mocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_CNN_SPACE, write_dataset
from postgres import free_port

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.errors import UsageError
from ensemble.search import storage
from ensemble.search.restart import delete_run
from ensemble.search.storage import STORAGE_ENV, open_storage, redact

pytestmark = pytest.mark.slow  # end to end: run with -m slow (CI runs both)

pytest.importorskip("keras")


def states(url: str, study: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=study, storage=url).trials]


def test_search_and_baselines_share_a_postgres_storage(
    postgres_url: str, runs_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    args = ["search", "--run", "pg", "--data", str(data), "--space", str(space), "--trials", "1"]
    assert main([*args, "--storage", postgres_url]) == 0
    monkeypatch.setenv(STORAGE_ENV, postgres_url)  # the URL from the environment, not the command line
    assert main(["baselines", "--run", "pg", "--models", "logreg", "--trials", "1", "--jobs", "1"]) == 0
    assert states(postgres_url, "pg.cnn") == ["COMPLETE"]  # the run's studies are named after it
    assert "COMPLETE" in states(postgres_url, "pg.baseline-logreg")
    for name in ("pg.cnn", "pg.baseline-logreg"):  # optuna-dashboard's name for the value
        assert optuna.load_study(study_name=name, storage=postgres_url).metric_names == ["val_accuracy"]
    out = capsys.readouterr()
    assert "s3cret-pw" not in out.out + out.err  # the password is never printed
    assert redact(postgres_url) in out.out


def test_restart_deletes_the_runs_studies_in_postgres(postgres_url: str, runs_env: Path, dataset: Path) -> None:
    for name in ("r.cnn", "r.baseline-knn", "someone-elses", "other.cnn"):
        optuna.create_study(study_name=name, storage=postgres_url, load_if_exists=True)
    open_run("r", data=dataset, say=lambda s: None)
    said: list[str] = []
    delete_run("r", storage_url=postgres_url, say=said.append)
    left = set(optuna.get_all_study_names(storage=postgres_url))
    assert {"someone-elses", "other.cnn"} <= left and not {"r.cnn", "r.baseline-knn"} & left  # only run r's
    assert not (runs_env / "r").exists() and not any("s3cret-pw" in s for s in said)
    for name in ("someone-elses", "other.cnn"):
        optuna.delete_study(study_name=name, storage=postgres_url)


def test_two_runs_in_one_database_keep_their_trials_apart(postgres_url: str, runs_env: Path, tmp_path: Path) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    for run, seed, trials in (("a", 1, "1"), ("b", 2, "2")):
        data = write_dataset(tmp_path / f"data-{run}", n_train=120, n_test=20, seed=seed)  # different data
        args = ["search", "--run", run, "--data", str(data), "--space", str(space), "--trials", trials]
        assert main([*args, "--storage", postgres_url]) == 0
    assert states(postgres_url, "a.cnn") == ["COMPLETE"] and states(postgres_url, "b.cnn") == ["COMPLETE"] * 2
    for run in ("a", "b"):
        seen = optuna.load_study(
            study_name="cnn", storage=open_storage(open_run(run, say=lambda s: None), postgres_url)
        )
        assert seen.study_name == "cnn" and {t.user_attrs["data_fingerprint"] for t in seen.trials} == {
            open_run(run, say=lambda s: None).dataset.fingerprint
        }


def test_a_wrong_password_is_one_line_without_the_password(postgres_url: str, runs_env: Path, dataset: Path) -> None:
    wrong = postgres_url.replace("s3cret-pw", "not-the-pw")
    done = subprocess.run(
        [sys.executable, "-m", "ensemble", "report", "--run", "w", "--data", str(dataset), "--storage", wrong],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not-the-pw" not in done.stderr + done.stdout and len(done.stderr.strip().splitlines()) == 1


def test_a_process_with_other_data_cannot_join_a_runs_study(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Machine B names machine A's run but has other data: one line, exit 2, nothing added to A's study."""
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    for machine, seed in (("A", 1), ("B", 2)):
        monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / machine / "runs"))  # each its own folder
        data = write_dataset(tmp_path / machine / "data", n_train=120, n_test=20, seed=seed)
        args = ["search", "--run", "shared", "--data", str(data), "--space", str(space), "--trials", "1"]
        code = main([*args, "--storage", postgres_url])
    assert code == 2 and states(postgres_url, "shared.cnn") == ["COMPLETE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belongs to data" in err[0] and "s3cret-pw" not in err[0]


DYING_WORKER = """
import sys, time
from types import SimpleNamespace
from pathlib import Path
import optuna
from ensemble.search.storage import open_storage

run = SimpleNamespace(name=sys.argv[3] if len(sys.argv) > 3 else "hb", path=lambda *p: Path(sys.argv[2]).joinpath(*p))
study = optuna.create_study(study_name="cnn", storage=open_storage(run, sys.argv[1], heartbeat=True),
                            direction="maximize", load_if_exists=True)
def objective(trial):
    trial.set_user_attr("worker", "tagged-by-the-dying-worker")
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.report(0.5, 1)
    print("running", flush=True)
    time.sleep(120)
    return 0.9
study.optimize(objective, n_trials=1)
"""


def test_a_dead_workers_trial_is_failed_by_the_heartbeat_and_run_again(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from ensemble.search.cnn.study import finished_trials

    monkeypatch.setenv("ENSEMBLE_HEARTBEAT_S", "1")
    worker = subprocess.Popen([sys.executable, "-c", DYING_WORKER, postgres_url, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})  # fmt: skip
    assert worker.stdout is not None and worker.stdout.readline().strip() == "running"
    time.sleep(1.5)  # a heartbeat or two recorded
    worker.kill()  # SIGKILL: no chance to say goodbye
    worker.wait()
    run = SimpleNamespace(name="hb", path=lambda *p: tmp_path.joinpath(*p))
    study = optuna.load_study(study_name="cnn", storage=open_storage(run, postgres_url, heartbeat=True))  # type: ignore[arg-type]
    time.sleep(3)  # past the grace period (2 heartbeats)
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1, log=True) and 0.95, n_trials=1)
    kinds = [(t.state.name, t.system_attrs.get("failed_trial")) for t in study.trials]
    assert kinds == [("FAIL", None), ("COMPLETE", 0)]  # failed by the heartbeat, then run again with its params
    assert (
        study.trials[1].params == study.trials[0].params and finished_trials(study) == 1
    )  # the dead try doesn't count


def test_a_killed_workers_trial_is_failed_by_the_next_command_that_opens_the_run(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker SIGKILLed mid-trial after the study reached its target: no worker asks for a trial again,
    so the next command (a worker that finds nothing to do, a build) fails the trial, tagged killed."""
    monkeypatch.setenv("ENSEMBLE_HEARTBEAT_S", "1")
    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    common = ["--run", "dead", "--data", str(data), "--storage", postgres_url]
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "A" / "runs"))
    assert main(["search", *common, "--space", str(space), "--trials", "1"]) == 0  # the target: 1, reached
    for folder, command in (("C", ["worker", *common]), ("A", ["build", *common, "--tta", "none"])):
        dying = subprocess.Popen([sys.executable, "-c", DYING_WORKER, postgres_url, str(tmp_path / "B"), "dead"],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert dying.stdout is not None and dying.stdout.readline().strip() == "running"
        time.sleep(1.5)  # a heartbeat or two recorded
        dying.kill()
        dying.wait()
        time.sleep(3)  # past the grace period (2 heartbeats)
        monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / folder / "runs"))
        assert main(command) == 0
        trials = optuna.load_study(study_name="dead.cnn", storage=postgres_url).trials
        assert [t.state.name for t in trials if t.state.name in ("RUNNING", "COMPLETE")] == ["COMPLETE"]
        dead = [t for t in trials if t.user_attrs.get("worker") == "tagged-by-the-dying-worker"]
        assert dead and all(t.state.name == "FAIL" and t.user_attrs.get("killed") for t in dead)


def test_run_names_with_dots_keep_their_studies_apart(postgres_url: str, runs_env: Path, dataset: Path) -> None:
    """Run ``d`` must not take run ``d.baseline-x``'s ``d.baseline-x.cnn`` for its own ``baseline-x.cnn``."""
    from ensemble.search.scoped import RunScopedStorage
    from ensemble.search.storage import connect

    runs = ("d", "d.baseline-x")
    for run in runs:
        open_run(run, data=dataset, say=lambda s: None)
        for study in ("cnn", "baseline-knn"):
            optuna.create_study(study_name=study, storage=RunScopedStorage(connect(postgres_url), run))
    seen = {run: sorted(optuna.get_all_study_names(RunScopedStorage(connect(postgres_url), run))) for run in runs}
    assert seen == {"d": ["baseline-knn", "cnn"], "d.baseline-x": ["baseline-knn", "cnn"]}  # each its own only
    with pytest.raises(KeyError):  # asked for by a name with a dot, run d finds nothing (not d.baseline-x's)
        optuna.load_study(study_name="baseline-x.cnn", storage=RunScopedStorage(connect(postgres_url), "d"))
    delete_run("d", storage_url=postgres_url, say=lambda s: None)
    left = set(optuna.get_all_study_names(storage=postgres_url))
    assert {"d.baseline-x.cnn", "d.baseline-x.baseline-knn"} <= left and not {"d.cnn", "d.baseline-knn"} & left
    delete_run("d.baseline-x", storage_url=postgres_url, say=lambda s: None)
    assert not {n for n in optuna.get_all_study_names(storage=postgres_url) if n.startswith("d.")}


def test_three_machines_one_run_build_from_a_fourth(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machines A and B (their own folders) add trials to one run's study in PostgreSQL, with an artifact
    store on a shared mount; an empty folder C builds and reports from the URL, the store and the data."""
    from ensemble.inference.predict import load_ensemble
    from ensemble.report.submission import check_submission
    from ensemble.search.artifacts import ARTIFACTS_ENV

    data = write_dataset(tmp_path / "data", n_train=150, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    store = tmp_path / "shared-mount"
    monkeypatch.setenv(ARTIFACTS_ENV, "")  # restored after the test (--artifacts also sets it, for child processes)
    common = ["--run", "fleet", "--data", str(data), "--storage", postgres_url, "--artifacts", str(store)]
    for machine, trials in (("A", "1"), ("B", "2")):
        monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / machine / "runs"))
        assert main(["search", *common, "--space", str(space), "--trials", trials]) == 0
    assert states(postgres_url, "fleet.cnn") == ["COMPLETE", "COMPLETE"]  # B added one: the study had 1 of 2
    for machine in ("A", "B"):  # their disks are elsewhere: C sees only the database and the store
        shutil.rmtree(tmp_path / machine)
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "C" / "runs"))
    assert main(["build", *common, "--top-k", "2", "--tta", "none", "--weights", "equal"]) == 0
    assert main(["report", *common]) == 0
    root = tmp_path / "C" / "runs" / "fleet"
    assert len(load_ensemble(root / "ensemble").members) == 2  # both trials' models came from the store
    assert {p.name for p in (root / "models" / "cnn").iterdir()} == {"trial-0000", "trial-0001"}  # downloaded
    assert len(check_submission(root / "submission.csv", n_rows=20)) == 20
    models = [p for p in store.rglob("*") if p.is_file() and p.read_bytes()[:2] == b"PK" and p.stat().st_size > 10_000]
    assert len(models) == 2  # one .keras zip per trial: the loop below checks each
    for model in models:  # every stored model loads with plain Keras, without ensemble
        code = "import sys, keras; keras.models.load_model(sys.argv[1]); assert 'ensemble' not in sys.modules"
        tmp = tmp_path / "probe.keras"
        tmp.write_bytes(model.read_bytes())
        done = subprocess.run([sys.executable, "-c", code, str(tmp)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-1500:]


def test_restart_also_removes_the_runs_files_from_the_artifact_store(
    postgres_url: str, runs_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ensemble.search.artifacts import ARTIFACTS_ENV

    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    store = tmp_path / "store"
    monkeypatch.setenv(ARTIFACTS_ENV, str(store))
    args = ["search", "--run", "gone", "--data", str(data), "--space", str(space), "--trials", "1"]
    assert main([*args, "--storage", postgres_url]) == 0
    assert any(p.is_file() for p in store.rglob("*"))  # the trial's files were uploaded
    delete_run("gone", storage_url=postgres_url, say=lambda s: None)
    assert not any(p.is_file() for p in store.rglob("*")) and "gone.cnn" not in optuna.get_all_study_names(postgres_url)


def test_a_search_through_the_grpc_proxy_lands_in_the_database(
    postgres_url: str, runs_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    env = {**os.environ, STORAGE_ENV: postgres_url}  # the password reaches the proxy by the environment
    cmd = [sys.executable, "-c", "import sys; from ensemble.cli import main; sys.exit(main())"]
    proxy = subprocess.Popen(
        [*cmd, "storage-proxy", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
        space = tmp_path / "tiny.yaml"
        space.write_text(TINY_CNN_SPACE.format(epochs=1))
        args = ["search", "--run", "viaproxy", "--data", str(data), "--space", str(space), "--trials", "2"]
        assert main([*args, "--storage", f"grpc://127.0.0.1:{port}"]) == 0
        assert states(postgres_url, "viaproxy.cnn") == ["COMPLETE", "COMPLETE"]  # stored by the proxy, run-scoped
        assert optuna.load_study(study_name="viaproxy.cnn", storage=postgres_url).metric_names == ["val_accuracy"]
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=30)
    assert "s3cret-pw" not in out + capsys.readouterr().out  # the proxy prints the URL with the password hidden


def test_a_grpc_url_with_no_proxy_is_a_one_line_error(runs_env: Path, dataset: Path, monkeypatch) -> None:
    monkeypatch.setattr(storage, "GRPC_READY_S", 1.0)
    with pytest.raises(UsageError, match="no Optuna storage proxy answers"):
        open_storage(open_run("np", data=dataset, say=lambda s: None), f"grpc://127.0.0.1:{free_port()}")


def _open_fresh(url: str) -> None:
    from ensemble.search.storage import connect

    connect(url, heartbeat=True)


def test_machines_opening_an_empty_database_at_once_all_get_in(postgres_url: str) -> None:
    import multiprocessing as mp

    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE fresh_race")
    fresh = postgres_url.rsplit("/", 1)[0] + "/fresh_race"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_fresh, args=(fresh,)) for _ in range(4)]  # all race to create Optuna's tables
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert optuna.get_all_study_names(storage=fresh) == []  # the schema is there and usable
