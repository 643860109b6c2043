from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import write_dataset

from ensemble.cli import main
from ensemble.data.runs import open_run, sweep_debris
from ensemble.errors import DataError, UsageError
from ensemble.search.restart import delete_run


def test_create_then_reopen(runs_env: Path, dataset: Path) -> None:
    run = open_run("r1", data=dataset, say=lambda s: None)
    meta = json.loads((runs_env / "r1" / "run.json").read_text())
    split = json.loads((runs_env / "r1" / "split.json").read_text())
    assert meta["data"]["fingerprint"] == run.dataset.fingerprint == split["fingerprint"]
    assert sorted(split["train"] + split["val"] + split["holdout"]) == list(range(60))
    again = open_run("r1", say=lambda s: None)
    assert again.split.val.tolist() == run.split.val.tolist()
    x, y = again.part("holdout")
    assert x.shape[1:] == (28, 28) and len(x) == len(y) == len(run.split.holdout) > 0


def test_changed_data_is_refused(runs_env: Path, dataset: Path, tmp_path: Path) -> None:
    open_run("r1", data=dataset, say=lambda s: None)
    other = write_dataset(tmp_path / "other", seed=9)
    with pytest.raises(DataError, match=r"data changed: run 'r1' was made from fingerprint"):
        open_run("r1", data=other)
    write_dataset(dataset, seed=7)  # data at the recorded path changes
    with pytest.raises(DataError, match="data changed"):
        open_run("r1")


def test_changed_split_settings_are_refused(runs_env: Path, dataset: Path) -> None:
    open_run("r1", data=dataset, say=lambda s: None)
    with pytest.raises(UsageError, match="was split with seed=0, not 3"):
        open_run("r1", seed=3)


@pytest.mark.parametrize("name", ["../x", "a b", ""])
def test_bad_run_names(runs_env: Path, name: str) -> None:
    with pytest.raises(UsageError, match="run name"):
        open_run(name)


def test_default_falls_back_to_demo_loudly(runs_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "split", "--run", "d"]) == 0
    out = capsys.readouterr().out
    assert "OFFLINE DEMO dataset" in out
    assert re.search(r"train 3,\d{3} / val 4\d\d / holdout 4\d\d", out)
    meta = json.loads((runs_env / "d" / "run.json").read_text())
    assert meta["data"]["how"] == "demo"


def test_default_location_is_used(runs_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(Path("data/digit-recognizer"))
    assert main(["data", "split", "--run", "k"]) == 0
    assert "default location data/digit-recognizer" in capsys.readouterr().out


def test_bad_data_leaves_no_run_folder(runs_env: Path, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "test.csv").unlink()
    assert main(["data", "split", "--run", "bad", "--data", str(dataset)]) == 2
    assert not (runs_env / "bad").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--val-frac", "0"],
        ["--holdout-frac", "0"],
        ["--val-frac", "0", "--holdout-frac", "0"],
        ["--val-frac", "-0.1"],
        ["--val-frac", "0.5", "--holdout-frac", "0.5"],
        ["--holdout-frac", "1"],
    ],
)
def test_split_fractions_outside_the_range_are_a_usage_error(
    runs_env: Path, dataset: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "split", "--run", "z", "--data", str(dataset), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: split fractions val_frac=")
    assert "each must be above 0 and their sum below 1" in err
    assert not (runs_env / "z").exists()


def test_fractions_that_leave_a_part_empty_are_refused(
    runs_env: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "split", "--run", "z", "--data", str(dataset), "--val-frac", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: 60 labeled rows are too few to split with val_frac=0.01, holdout_frac=0.1: the val part would be empty"
    )
    assert not (runs_env / "z").exists()


# ---------------------------------------------------------------- --restart deletes only a real run folder
def _sentinel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("precious")
    return folder / "keep.txt"


@pytest.mark.parametrize("name", [".", "..", "a/../b", "../runs", "/ABS", "", "-x", "a\\b"])
def test_restart_with_a_bad_name_deletes_nothing(runs_env: Path, tmp_path: Path, name: str, capsys) -> None:
    keep = [_sentinel(runs_env / "other"), _sentinel(tmp_path / "outside"), _sentinel(runs_env / "a" / "b")]
    if name == "/ABS":
        name = str(tmp_path / "outside")
    assert main(["run", f"--run={name}", "--restart"]) == 2
    err = capsys.readouterr().err
    assert "run name" in err and err.count("\n") == 1
    assert all(k.read_text() == "precious" for k in keep)


def test_restart_refuses_a_folder_that_is_not_a_run(runs_env: Path, tmp_path: Path, capsys) -> None:
    keep = _sentinel(runs_env / "notarun")
    assert main(["run", "--name", "notarun", "--restart"]) == 2
    assert "not a run folder (no run.json)" in capsys.readouterr().err and keep.exists()
    (runs_env / "link").symlink_to(_sentinel(tmp_path / "target").parent)
    (tmp_path / "target" / "run.json").write_text("{}")
    assert main(["run", "--run", "link", "--restart"]) == 2
    assert "a link" in capsys.readouterr().err and (tmp_path / "target" / "keep.txt").exists()


def test_restart_refuses_while_a_worker_adds_trials(runs_env: Path, dataset: Path) -> None:
    import subprocess
    import sys

    run = open_run("busy", data=dataset, say=lambda s: None)
    code = "import sys,time;from pathlib import Path;from ensemble.locks import worker_token;"
    code += "print(worker_token(Path(sys.argv[1])),flush=True);time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip()
        with pytest.raises(UsageError, match=rf"live worker process\(es\) \(pid {proc.pid}\)"):
            delete_run("busy", say=lambda s: None)
        assert (run.root / "run.json").is_file()
    finally:
        proc.kill()
        proc.wait()
    delete_run("busy", say=lambda s: None)
    assert not run.root.exists() and runs_env.is_dir()


def test_restart_deletes_the_runs_studies_in_a_remote_storage(runs_env: Path, dataset: Path, tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'remote.db'}"
    for name in ("r.cnn", "r.baseline-knn", "someone-elses", "other.cnn"):  # a run's studies: RUN.NAME
        optuna.create_study(study_name=name, storage=url)
    open_run("r", data=dataset, say=lambda s: None)
    delete_run("r", storage_url=url, say=lambda s: None)
    assert sorted(optuna.get_all_study_names(storage=url)) == ["other.cnn", "someone-elses"]
    assert not (runs_env / "r").exists()


# ---------------------------------------------------------------- debris of a killed writer
def test_sweep_restores_an_interrupted_swap_and_removes_debris(runs_env: Path, dataset: Path) -> None:
    from ensemble.locks import worker_token

    run = open_run("s", data=dataset, say=lambda s: None)
    old = run.path(".ensemble-old-1")
    _sentinel(old)  # killed between "ensemble -> .ensemble-old-1" and ".ensemble-tmp-2 -> ensemble"
    _sentinel(run.path(".ensemble-tmp-2"))
    run.path(".submission.csv.abc.tmp").write_text("half")
    cache = run.path(".cache")
    cache.mkdir()
    (cache / f"search-arrays-{os.uname().nodename}-1-dead.npz").write_bytes(b"x")
    live = cache / f"search-arrays-{worker_token(run.root)}.npz"
    live.write_bytes(b"x")
    gone = sweep_debris(run.root, say=lambda s: None)
    assert run.path("ensemble", "keep.txt").read_text() == "precious"
    assert not old.exists() and not run.path(".ensemble-tmp-2").exists()
    assert not run.path(".submission.csv.abc.tmp").exists() and live.exists()
    assert len(gone) == 3  # the tmp folder, the tmp file and the dead process's arrays
