"""The search spec a worker reads from a shared storage: trusted in nothing, complete in what changes a trial.

The refusals run the real ``ensemble worker`` in another folder, against a SQLite storage whose study
was made by the product's own code and then tampered with, as anyone who can write to the storage could.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import TINY_CNN_SPACE, write_dataset

from ensemble import __version__
from ensemble.cli import build_parser, main
from ensemble.data.runs import open_run
from ensemble.errors import UsageError
from ensemble.search.cnn import spec as worker_spec
from ensemble.search.cnn.study import STUDY, load_cnn_space
from ensemble.search.cnn.worker import worker_settings
from ensemble.search.storage import check_run_identity, open_storage

RUN = "crew"


@pytest.fixture
def launched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, optuna.Study]:
    """Machine A's run, its CNN study in a SQLite storage and the spec A published: (data, url, study)."""
    data = write_dataset(tmp_path / "data", n_train=120, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "A" / "runs"))
    run = open_run(RUN, data=data, say=lambda s: None)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name=STUDY, storage=open_storage(run, url), direction="maximize")
    check_run_identity(study, run)
    worker_spec.publish(study, load_cnn_space(space), target=2, count="finished", epochs=1, pruner="none", seed=7,
                        max_train=40, mixed_precision=False)  # fmt: skip
    return data, url, study


def _worker(tmp_path: Path, data: Path, url: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "B"
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "ENSEMBLE_RUNS": str(folder / "runs"), "ENSEMBLE_STORAGE": url}
    cmd = [sys.executable, "-m", "ensemble", "worker", "--run", RUN, "--data", str(data)]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=180)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _tamper(study: optuna.Study, **changes: Any) -> None:
    spec = dict(study.user_attrs[worker_spec.SPEC_ATTR])
    spec.update(changes)
    study.set_user_attr(worker_spec.SPEC_ATTR, {k: v for k, v in spec.items() if v is not _DROP})


_DROP = object()
OLD_FORMAT = {"format": _DROP, "version": _DROP, "seed": _DROP, "max_train": _DROP, "mixed_precision": _DROP}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"space_name": "x/../../../../{tmp}/PWNED"}, "space_name"),  # any field it does not know
        ({**OLD_FORMAT, "space_name": "x/../../../../{tmp}/PWNED"}, "format"),  # the old layout, hostile
        ({"space": "filters: many\nrotation: 5.0\n"}, "filters"),  # a bad YAML type
        ({"space": "rotation: abc\n"}, "rotation"),  # was a ValueError traceback
        ({"space": "optimizer: {type: categorical, choices: [adam, 3]}\n"}, "optimizer"),  # a later choice
        ({"space": "- a list\n"}, "space"),
        ({"space": '"\\e[2Jevil": 1\n'}, "evil"),  # a key that would drive the terminal
        ({"target": 10**12}, "target"),  # a huge target
        ({"count": "everything"}, "count"),
        ({"epochs": 10**9}, "epochs"),
        ({"version": "0.0.1"}, "version"),  # another ensemble version
    ],
)
def test_a_worker_refuses_a_tampered_spec_in_one_line_and_writes_nothing_outside_its_run(
    launched: tuple[Path, str, optuna.Study], tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    data, url, study = launched
    hostile = tmp_path / "PWNED"
    changes = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in changes.items()}
    _tamper(study, **changes)
    before = _files(tmp_path)
    done = _worker(tmp_path, data, url)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr and named in err[0], done.stderr
    assert "\x1b" not in done.stderr
    assert not hostile.exists() and not any(hostile.name in str(p) for p in tmp_path.rglob("*"))
    new = {p for p in _files(tmp_path) - before if not p.name.startswith("shared.db")}
    assert all(p.is_relative_to(tmp_path / "B" / "runs" / RUN) or p.is_relative_to(tmp_path / "B" / "runs" / ".locks")
               for p in new), new  # fmt: skip
    assert study.trials == []  # nothing trained


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", 0), ("target", True), ("target", "5"), ("epochs", 0), ("epochs", 2.5), ("pruner", "evil"),
        ("seed", -1), ("max_train", 0), ("max_train", 10**12), ("mixed_precision", "yes"), ("space", 42),
        ("space", "a: " + "x" * 200_000), ("format", 1),
    ],
)  # fmt: skip
def test_every_field_is_checked(launched: tuple[Path, str, optuna.Study], field: str, value: Any) -> None:
    raw = {**launched[2].user_attrs[worker_spec.SPEC_ATTR], field: value}
    with pytest.raises(UsageError, match=f"'{field}'"):
        worker_spec.read(raw, run=RUN)


def test_the_published_spec_holds_what_changes_a_trial(launched: tuple[Path, str, optuna.Study]) -> None:
    raw = launched[2].user_attrs[worker_spec.SPEC_ATTR]
    assert raw["version"] == __version__ and raw["format"] == worker_spec.SPEC_FORMAT
    spec = worker_spec.read(raw, run=RUN)
    assert (spec.seed, spec.max_train, spec.mixed_precision, spec.epochs, spec.target) == (7, 40, False, 1, 2)
    assert spec.space.params["learning_rate"] == {"type": "float", "low": 1.0e-3, "high": 3.0e-3, "log": True}
    mixed = worker_spec.read({**raw, "mixed_precision": True}, run=RUN)
    settings = worker_settings(mixed, timeout=None, jobs=1, epochs=lambda: 3)
    assert (settings.seed, settings.max_train, settings.mixed_precision, settings.pruner) == (7, 40, True, "none")
    assert settings.sampler_seed != settings.seed and settings.epochs() == 3  # type: ignore[operator]


def test_the_storage_proxy_listens_on_loopback_unless_told() -> None:
    assert build_parser().parse_args(["storage-proxy"]).host == "127.0.0.1"
    assert build_parser().parse_args(["storage-proxy", "--host", "10.0.0.5"]).host == "10.0.0.5"


@pytest.mark.slow
def test_a_worker_trains_on_the_launchers_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ensemble search --max-train 40 --seed 3`` publishes them; a worker in another folder trains its trial on
    the same 40 rows (the same seed), not on all of them with its own seed."""
    pytest.importorskip("keras")
    data = write_dataset(tmp_path / "data", n_train=150, n_test=20)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["--run", RUN, "--data", str(data), "--storage", url]
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "A" / "runs"))
    assert main(["search", *common, "--space", str(space), "--trials", "1", "--max-train", "40", "--seed", "3"]) == 0
    run = open_run(RUN, say=lambda s: None)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(run, url))
    raw = study.user_attrs[worker_spec.SPEC_ATTR]
    assert (raw["max_train"], raw["seed"], raw["mixed_precision"]) == (40, 3, False)
    worker_spec.update(study, target=2)  # one more trial for the worker
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "B" / "runs"))
    assert main(["worker", *common]) == 0
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["run_root"] == str((tmp_path / "B" / "runs" / RUN).resolve())  # the worker's
    assert trials[1].user_attrs["n_train"] == trials[0].user_attrs["n_train"] == 40


@pytest.mark.parametrize("recorded", ["\x1b[31mnot a mapping", ["a", "list"], {"data_fingerprint": "\x1b[2Jabc"}])
def test_a_tampered_run_identity_is_a_one_line_refusal(launched: tuple[Path, str, optuna.Study], recorded: Any) -> None:
    study = launched[2]
    study.set_user_attr("run_identity", recorded)
    run = open_run(RUN, say=lambda s: None)
    with pytest.raises(UsageError, match="belongs to data") as refused:
        check_run_identity(study, run)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)
