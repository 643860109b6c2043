from __future__ import annotations

import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pytest

from ensemble.data.load import PIXEL_COLUMNS, TRAIN_COLUMNS

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "digit-recognizer"
#: A CNN search space that trains in seconds (``.format(epochs=N)``).
TINY_CNN_SPACE = """\
conv_blocks: 2
filters: 4
dense_units: 16
dense_dropout: 0.0
conv_dropout: 0.0
batch_size: 32
epochs: {epochs}
rotation: 5.0
learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
optimizer: {{type: categorical, choices: [adam, sgd]}}
"""

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny class-dependent 28x28 images: a bright bar whose position encodes the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 200 + rng.integers(0, 55)
    return x, y.astype(np.uint8)


def csv_text(header: tuple[str, ...], rows: np.ndarray, newline: str = "\n") -> str:
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows.tolist()]
    return newline.join(lines) + newline


def write_dataset(folder: Path, n_train: int = 60, n_test: int = 20, *, gz: bool = False, seed: int = 0) -> Path:
    """Write a Kaggle-format train/test pair into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_digits(n_train + n_test, seed)
    train = np.column_stack([y[:n_train], x[:n_train].reshape(n_train, -1)])
    test = x[n_train:].reshape(n_test, -1)
    for name, header, rows in (("train", TRAIN_COLUMNS, train), ("test", PIXEL_COLUMNS, test)):
        text = csv_text(header, rows).encode()
        if gz:
            (folder / f"{name}.csv.gz").write_bytes(gzip.compress(text))
        else:
            (folder / f"{name}.csv").write_bytes(text)
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def runs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate runs/ and the demo cache inside tmp_path."""
    monkeypatch.setenv("ENSEMBLE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ENSEMBLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ENSEMBLE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs"


#: The settings of a tiny whole run: 2 one-epoch CNN trials, 2 one-trial baselines, 1 final member.
TINY_RUN_SETTINGS = {
    "cnn_trials": 2,
    "baselines": "logreg,knn",
    "baseline_trials": 1,
    "top_k": 2,
    "tta": "identity,shift:1:0",
    "plan": {"min_epochs": 1, "max_epochs": 2, "min_members": 2, "max_members": 2, "overhead_s": 0.5},
    "final_members": 1,
}


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny run, finished through ``ensemble.fit`` (every stage, report and submission), shared read-only.

    Returns (the Result, the run's test images (N, 28, 28)). Tests must not change its folder.
    """
    import ensemble
    from ensemble.data.load import load_dataset

    tmp = tmp_path_factory.mktemp("finished")
    data = write_dataset(tmp / "data", n_train=300, n_test=40, seed=4)
    (tmp / "cnn.yaml").write_text(TINY_CNN_SPACE.format(epochs=1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_RUNS", str(tmp / "runs"))
        mp.setenv("ENSEMBLE_CACHE", str(tmp / "cache"))
        settings = {**TINY_RUN_SETTINGS, "space": str(tmp / "cnn.yaml")}
        result = ensemble.fit(data, run="tiny", time_budget="2m", settings=settings, progress=False)
    return result, load_dataset(data).x_test


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real, throwaway PostgreSQL server (see tests/postgres.py); skips only where none can be started."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (extra 'postgres') is not installed")
    from postgres import postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


def our_children() -> list:
    """This process's live multiprocessing children, less joblib's reusable loky workers (earlier tests' sklearn)."""
    import multiprocessing as mp

    return [p for p in mp.active_children() if not type(p).__name__.startswith("Loky")]


def wait_until(what, timeout: float = 180.0) -> None:
    """Poll ``what()`` until it is true; fail the test after ``timeout`` seconds."""
    end = time.time() + timeout
    while not what():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def stored_cnn_trials(url: str, run: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of run ``run``'s CNN study in the database at ``url`` ([] while it is not created yet)."""
    try:
        return optuna.load_study(study_name=f"{run}.cnn", storage=url).trials
    except (KeyError, optuna.exceptions.StorageInternalError):
        return []


def default_sigint() -> None:
    """``preexec_fn``: the child starts with SIGINT at its default, as from a shell.

    A child inherits an ignored SIGINT from its parent; in a full-suite run the children of the Ctrl-C
    tests once ignored it (the cause, in some earlier in-process test, was not found).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_built_run(tmp_path: Path, *, epochs: int) -> Run:
    """A run on 300 generated digits with 2 tiny CNN trials of ``epochs`` epochs and their ensemble (TTA: 2 views)."""
    from ensemble.combine.build import build_ensemble
    from ensemble.data.runs import open_run
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search

    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    (tmp_path / "cnn.yaml").write_text(TINY_CNN_SPACE.format(epochs=2))
    run = open_run("r", data=data, say=lambda s: None)
    space = load_cnn_space(tmp_path / "cnn.yaml")
    run_search(run, space, SearchSettings(isolate=False, trials=2, pruner="none", epochs=epochs), say=lambda s: None)
    build_ensemble(run, top_k=2, weights="equal", tta="identity,shift:1:0", progress=False, say=lambda s: None)
    return run


#: sitecustomize.py for :func:`without_packages`: a meta-path finder that makes the listed top-level packages
#: absent (import and importlib.util.find_spec raise ModuleNotFoundError), in the process and its children.
_BLOCKER = """\
import os, sys

_BLOCKED = set(filter(None, os.environ.get("ENSEMBLE_TEST_BLOCK", "").split(",")))


class _Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker)
"""


def without_packages(tmp_path: Path, *packages: str) -> dict[str, str]:
    """The environment of a child ``python`` that sees the repository's code and none of ``packages`` installed.

    No KERAS_BACKEND or ENSEMBLE_* variables are inherited; runs and caches go under ``tmp_path``.
    """
    import os

    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENSEMBLE_", "KERAS_BACKEND", "PYTHON"))}
    return env | {
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "ENSEMBLE_TEST_BLOCK": ",".join(packages),
        "ENSEMBLE_RUNS": str(tmp_path / "runs"),
        "ENSEMBLE_CACHE": str(tmp_path / "cache"),
    }


FAKE_SMI = """#!/bin/sh
if [ "$1" = "-L" ]; then
  for i in 0 1 2 3; do echo "GPU $i: NVIDIA Fake T4 (UUID: GPU-0000000$i)"; done
  exit 0
fi
exit 1
"""


@pytest.fixture
def four_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``nvidia-smi`` first on PATH that lists 4 GPUs; CUDA_VISIBLE_DEVICES unset."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return smi
