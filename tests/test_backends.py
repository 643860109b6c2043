"""Every Keras backend: a tiny search -> build -> predict under TensorFlow, JAX and torch, and ensembles
that predict the same labels under a backend other than the one that built them.

Each backend runs in a process of its own (Keras picks the backend at import): tests/backend_job.py.
The jobs run in ORDER, and each also predicts the ensembles built before it: the torch-built
ensemble is predicted under TensorFlow and JAX, the TensorFlow-built one under JAX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_CNN_SPACE, write_dataset

pytestmark = pytest.mark.slow  # end to end: run with -m slow (CI runs both)

ORDER = ("torch", "tensorflow", "jax")
JOB = Path(__file__).with_name("backend_job.py")


class Jobs:
    """Runs each backend's job once, on first use, in ORDER; remembers results and failures."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = write_dataset(root / "data", n_train=300, n_test=120, seed=2)
        self.space = root / "cnn.yaml"
        self.space.write_text(TINY_CNN_SPACE.format(epochs=1))
        self.results: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}

    def get(self, backend: str) -> dict[str, Any]:
        if backend not in self.results and backend not in self.failures:
            self._run(backend)
        if backend in self.failures:
            pytest.fail(self.failures[backend])
        return self.results[backend]

    def _run(self, backend: str) -> None:
        if importlib.util.find_spec(backend) is None:
            pytest.skip(f"Keras backend {backend} is not installed (the dev extra installs it)")
        work = self.root / backend
        work.mkdir()
        foreign = [r["ensemble"] for r in self.results.values()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")}
        env.update(KERAS_BACKEND=backend, ENSEMBLE_RUNS=str(self.root / "runs"), ENSEMBLE_CACHE=str(self.root))
        args = [sys.executable, str(JOB), str(work), str(self.data), str(self.space), *foreign]
        r = subprocess.run(args, env=env, cwd=work, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            self.failures[backend] = f"{backend} job exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
            return
        self.results[backend] = {**json.loads((work / "result.json").read_text()), "work": work}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    return Jobs(tmp_path_factory.mktemp("backends"))


@pytest.mark.parametrize("backend", ORDER)
def test_search_build_predict_under_each_backend(jobs: Jobs, backend: str) -> None:
    """Search, build, predict under the backend; the prediction repeated in two threads never changes."""
    r = jobs.get(backend)
    assert r["backend"] == backend
    assert r["members"] == 2 and len(r["views"]) == 3 and r["images"] == 120
    assert r["repeat_maxdiff"] <= 1e-6, r  # 10 more predictions of 15 batches, two members in two threads
    assert r["build_maxdiff"] <= 1e-5, r  # ensemble predict gives what ensemble build computed
    own = np.load(r["work"] / "own.npy")
    assert own.shape == (120, 10) and np.allclose(own.sum(1), 1, atol=1e-4)
    assert (r["work"] / "submission.csv").read_text().count("\n") == 121


def test_an_ensemble_predicts_the_same_labels_under_the_other_backends(jobs: Jobs) -> None:
    """The torch-built ensemble under TensorFlow and JAX, the TensorFlow-built one under JAX: same labels."""
    done = {b: jobs.get(b) for b in ORDER}
    pairs = [(built, under) for i, built in enumerate(ORDER) for under in ORDER[i + 1 :]]
    assert len(pairs) == 3
    for built, under in pairs:
        want = np.load(done[built]["work"] / "own.npy")
        got = np.load(done[under]["work"] / f"cross-{built}.npy")
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"built under {built}, predicted under {under}")
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3  # a label a 1e-4 difference cannot flip
        assert clear.sum() >= 100, f"only {clear.sum()} of 120 clear labels built under {built}"
        assert np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear]), (built, under)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_ensemble_run_end_to_end_under_backend(tmp_path: Path, backend: str) -> None:
    """``ensemble run --backend B``: every stage (trainer processes, the final refit) on a tiny space and data."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras backend {backend} is not installed (the dev extra installs it)")
    data = write_dataset(tmp_path / "data", n_train=300, n_test=40, seed=4)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_CNN_SPACE.format(epochs=1))
    plan = '{"min_epochs": 1, "max_epochs": 1, "min_members": 2, "max_members": 2, "overhead_s": 0.5}'
    sets = [f"space={space}", "cnn_trials=2", "baselines=", "top_k=2", f"plan={plan}", "final_members=1"]
    args = ["run", "--name", "e2e", "--data", str(data), "--backend", backend]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENSEMBLE_", "KERAS_BACKEND"))}
    env.update(ENSEMBLE_RUNS=str(tmp_path / "runs"), ENSEMBLE_CACHE=str(tmp_path))
    cmd = [sys.executable, "-m", "ensemble", *args, *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"{backend}/cpu" in r.stdout  # the trials ran under the backend
    root = tmp_path / "runs" / "e2e"
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("data", "cnn_search", "baselines", "build", "report", "refit"))
    for folder in ("ensemble", "ensemble-full"):  # the build, and the final refit of the final model's CNNs
        assert json.loads((root / folder / "manifest.json").read_text())["keras"]["backend"] == backend
    assert stages["refit"]["refitted"] and len(stages["final"]["added"]) == 1  # no baselines: a CNN is final
    assert (root / "submission.csv").read_text().count("\n") == 41
