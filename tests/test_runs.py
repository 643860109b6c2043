from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_dataset

from ensemble.cli import main
from ensemble.errors import DataError, UsageError
from ensemble.runs import open_run


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
