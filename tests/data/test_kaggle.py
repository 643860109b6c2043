"""A Kaggle notebook: the competition's input folder is found, and runs go under /kaggle/working."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_dataset

from ensemble.data.kaggle import KAGGLE_ENV, KAGGLE_ROOT_ENV, competition_shaped, kaggle_root
from ensemble.data.runs import default_data_candidates, open_run, resolve_data, runs_dir


@pytest.fixture
def kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake Kaggle root: input/digit-recognizer holds the competition's files, working/ is the output."""
    root = tmp_path / "kaggle"
    write_dataset(root / "input" / "digit-recognizer", n_train=60, n_test=20)
    (root / "working").mkdir()
    monkeypatch.setenv(KAGGLE_ROOT_ENV, str(root))
    for name in ("ENSEMBLE_RUNS", "ENSEMBLE_DATA", KAGGLE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no ./data here
    return root


def test_detected_by_its_input_folder_and_switched_by_the_environment(
    kaggle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert kaggle_root() == kaggle
    monkeypatch.setenv(KAGGLE_ENV, "0")
    assert kaggle_root() is None and runs_dir() == Path("runs")
    monkeypatch.setenv(KAGGLE_ENV, "1")
    monkeypatch.setenv(KAGGLE_ROOT_ENV, str(tmp_path / "elsewhere"))  # forced on: no input folder needed
    assert kaggle_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(KAGGLE_ENV)
    assert kaggle_root() is None  # not forced, and no input folder there


def test_the_data_search_finds_the_competition_and_runs_go_to_working(kaggle: Path) -> None:
    assert kaggle / "input" / "digit-recognizer" in default_data_candidates()
    path, how = resolve_data(None, say=lambda s: None)
    assert (path, how) == (kaggle / "input" / "digit-recognizer", "default")
    assert runs_dir() == kaggle / "working" / "runs"
    run = open_run("k", say=lambda s: None)  # no data given: the competition's, not the demo digits
    assert run.root == kaggle / "working" / "runs" / "k" and (run.root / "run.json").is_file()
    assert run.meta["data"]["how"] == "default" and len(run.x_test) == 20


def test_runs_env_still_wins(kaggle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "mine"))
    assert runs_dir() == tmp_path / "mine"


def test_only_a_competition_sized_test_set_gets_a_submit_line() -> None:
    assert competition_shaped(28_000)
    assert not competition_shaped(1_000) and not competition_shaped(27_999)
