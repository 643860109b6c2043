"""The seed-kernel benchmark, tiny: a run with a real kNN baseline and its report, versus one kernel epoch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset

from ensemble.cli import main as cli
from ensemble.data.runs import open_run
from ensemble.io import write_json
from ensemble.report.stats import mcnemar

pytest.importorskip("keras")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_seed_kernel.py"


def _bench():
    if str(SCRIPT.parent) not in sys.path:  # as when run: the script's folder is on sys.path (machine.py, ...)
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("vs_seed_kernel", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wall_seconds_counts_the_side_by_side_search_once(tmp_path: Path) -> None:
    bench = _bench()
    assert bench.run_wall_seconds(tmp_path) is None
    stages = {"data": 2, "cnn_search": 100, "baselines": 60, "build": 10, "report": 3}
    write_json(tmp_path / "stages.json", {"stages": {k: {"done": True, "seconds": v} for k, v in stages.items()}})
    assert bench.run_wall_seconds(tmp_path) == 115.0
    write_json(tmp_path / "stages.json", {"stages": {}, "wall_seconds": 42.5})
    assert bench.run_wall_seconds(tmp_path) == 42.5


def test_kernel_vs_final_model_on_the_holdout(runs_env: Path, tmp_path: Path, capsys) -> None:
    bench = _bench()
    data = write_dataset(tmp_path / "data", n_train=500, n_test=20, seed=4)
    run = open_run("r", data=str(data), val_frac=0.2, holdout_frac=0.2, say=lambda s: None)
    knn = ["baselines", "--run", "r", "--models", "knn", "--trials", "1", "--no-refit", "--jobs", "1"]
    assert cli(knn) == 0
    assert cli(["report", "--run", "r", "--gallery", "0"]) == 0
    assert bench.main(["--run", "r", "--reuse", "--seconds", "20"]) == 2  # nothing saved yet
    capsys.readouterr()

    assert bench.main(["--run", "r", "--seconds", "20", "--epochs-cap", "1", "--rows", "200"]) == 0
    out = capsys.readouterr().out
    assert "CPU: " in out and "epoch  1/1" in out and "McNemar: " in out and "product " in out
    saved = json.loads(run.path("report", "vs_seed_kernel.json").read_text())
    y = run.part("holdout")[1]
    kernel = np.load(run.path("report", "seed_kernel_proba_holdout.npy"))
    assert kernel.shape == (len(y), 10) and kernel.dtype == np.float32
    final = json.loads(run.path("report", "summary.json").read_text())["final_model"]
    assert saved["product"]["model"] == final == "baseline-knn-trial-0000"
    product = np.load(next(run.path("models", "baseline-knn").glob("trial-*/proba_holdout.npy")))
    c = saved["comparison"]
    assert c["product_accuracy"] == pytest.approx(float((product.argmax(1) == y).mean()))
    assert c["kernel_accuracy"] == pytest.approx(float((kernel.argmax(1) == y).mean()))
    assert c["kernel_errors"] == int((kernel.argmax(1) != y).sum())
    test = mcnemar(y, product.argmax(1), kernel.argmax(1))
    assert (c["mcnemar"]["a_only"], c["mcnemar"]["b_only"]) == (test.a_only, test.b_only)
    assert c["product_errors"] - c["kernel_errors"] == test.b_only - test.a_only
    assert c["product_wins"] == (c["product_errors"] < c["kernel_errors"])
    k = saved["kernel"]
    assert k["epochs"] == 1 and k["n_train"] == 200 and k["budget_seconds"] == 20

    # --reuse: no training, same kernel; --final-proba names the product's probabilities directly
    path = str(next(run.path("models", "baseline-knn").glob("trial-*/proba_holdout.npy")))
    rc = bench.main(["--run", "r", "--reuse", "--final-proba", path, "--require-win"])
    out = capsys.readouterr().out
    assert "reusing" in out and "epoch " not in out
    assert rc == (0 if c["product_wins"] else 1)
    again = json.loads(run.path("report", "vs_seed_kernel.json").read_text())
    assert again["product"]["model"] == "baseline-knn/trial-0000" and again["kernel"] == k
    assert {key: v for key, v in again["comparison"].items() if key != "mcnemar"} == {
        key: v for key, v in c.items() if key != "mcnemar"
    }
