"""A family whose optional package is missing (XGBoost: the ``xgboost`` extra) is skipped with one line.

The children run with xgboost hidden by a sitecustomize.py (conftest.without_packages): the families' code is
the real one, as on a machine where the package was never installed.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import without_packages, write_dataset

from ensemble.cli import main

SPACES = {
    "logreg": "search_rows: 150\npca_components: 0\nC: 0.1\nmax_iter: 50\n",
    "xgboost": "search_rows: 150\npca_components: 5\nn_estimators: 3\nmax_depth: 2\nmax_bin: 16\n",
}
SKIPPED = 'xgboost: skipped (not installed: pip install "ensemble[xgboost]")'


def _setup(tmp_path):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    for name, text in SPACES.items():
        (spaces / f"{name}.yaml").write_text(text)
    return ["--run", "t", "--data", str(data), "--spaces", str(spaces), "--jobs", "1", "--trials", "1"]


def _child(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_without_xgboost_its_family_is_skipped_and_the_others_run(tmp_path):
    args = _setup(tmp_path)
    env = without_packages(tmp_path, "xgboost")
    done = _child(["-m", "ensemble", "baselines", *args, "--models", "logreg,xgboost", "--no-refit"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.lower().startswith("xgboost")] == [SKIPPED], done.stdout
    assert "families: logreg" in done.stdout and "done in" in done.stdout
    assert list((tmp_path / "runs" / "t" / "models" / "baseline-logreg").glob("trial-*/proba_val.npy"))
    assert not (tmp_path / "runs" / "t" / "models" / "baseline-xgboost").exists()

    done = _child(["-m", "ensemble", "baselines", *args, "--models", "xgboost"], env, tmp_path)  # nothing left
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        'error: no baseline family can run: xgboost not installed: pip install "ensemble[xgboost]"'
    ]
    assert SKIPPED in done.stdout.splitlines()


def test_an_xgboost_model_loaded_without_xgboost_is_one_artifact_error(tmp_path, runs_env):
    args = _setup(tmp_path)
    assert main(["baselines", *args, "--models", "xgboost", "--no-refit"]) == 0  # trained with xgboost here
    (folder,) = (runs_env / "t" / "models" / "baseline-xgboost").glob("trial-*")
    code = (
        "import sys\n"
        "from ensemble.errors import ArtifactError\n"
        "from ensemble.search.baselines.saved import load_model\n"
        "try:\n"
        "    load_model(sys.argv[1])\n"
        "except ArtifactError as exc:\n"
        "    print(exc)\n"
    )
    done = _child(["-c", code, str(folder)], without_packages(tmp_path, "xgboost"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f'{folder}: an XGBoost model, and xgboost is not installed: pip install "ensemble[xgboost]"'
    )
