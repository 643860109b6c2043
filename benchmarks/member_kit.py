"""What the member benchmarks (``snapshots.py``, ``seeds_or_configs.py``) share: training, errors, votes."""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.search.cnn.config import CnnConfig

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def quick_config(epochs: int) -> CnnConfig:
    """The quick space's default CNN configuration, trained for ``epochs``."""
    from ensemble.search.cnn.study import load_cnn_space
    from ensemble.search.spaces import space_file

    defaults = load_cnn_space(space_file("cnn_quick.yaml")).defaults()
    return CnnConfig.from_json(defaults, extra="ignore").replace(epochs=epochs)


def member_parser(doc: str, *, run_help: str, epochs: int) -> argparse.ArgumentParser:
    """The options every member benchmark takes: --run, --seeds, --epochs, --max-train."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--run", required=True, help=run_help)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--max-train", type=int, default=None, help="train on at most this many rows (a quick check)")
    return ap


def run_parts(name: str, max_train: int | None) -> tuple[Run, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run ``name``, its train part (at most ``max_train`` rows) and its holdout part: (run, x, y, xh, yh)."""
    from ensemble.data.runs import open_run

    run = open_run(name, say=lambda s: None)
    x, y = run.part("train")
    xh, yh = run.part("holdout")
    return run, x[:max_train], y[:max_train], xh, yh


def errors(proba: np.ndarray, y: np.ndarray) -> int:
    """Wrongly classified digits."""
    return int((proba.argmax(1) != y).sum())


def vote(probas: list[np.ndarray]) -> np.ndarray:
    """The soft vote: the mean of the members' class probabilities."""
    return np.mean(probas, axis=0)


def mean_vote_errors(probas: list[np.ndarray], n: int, y: np.ndarray) -> tuple[float, int]:
    """Mean errors over every vote of ``n`` of ``probas`` (and how many votes that is)."""
    errs = [errors(vote([probas[i] for i in c]), y) for c in combinations(range(len(probas)), n)]
    return float(np.mean(errs)), len(errs)


def progress(label: str, epochs: int) -> Any:
    """An ``on_epoch`` callback for ``fit_model`` that prints one line per epoch."""
    t0 = time.perf_counter()

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        took = time.perf_counter() - t0
        print(f"    {label} epoch {epoch}/{epochs}: accuracy {logs.get('accuracy', 0):.4f} ({took:.0f}s)", flush=True)

    return on_epoch


def train_product(config: CnnConfig, x: np.ndarray, y: np.ndarray, seed: int, label: str) -> tuple[Any, float]:
    """The product's training (``fit_model``, no validation: the weights at the last epoch); (model, seconds)."""
    from ensemble.search.cnn import model as cnn

    model, info = cnn.fit_model(config, x, y, seed=seed, on_epoch=progress(label, config.epochs))
    return model, float(info["train_seconds"])


def row(name: str, errs: float, n_holdout: int, ref: float | None = None, note: str = "") -> str:
    """One table line: errors, holdout accuracy, ratio of errors against the reference."""
    ratio = f"{errs / ref:6.2f}" if ref else f"{'':6}"
    return f"{name:44} {errs:8.1f} {1 - errs / n_holdout:12.4f} {ratio:>8}  {note}"


def header() -> str:
    return f"{'model':44} {'errors':>8} {'holdout acc':>12} {'vs ref':>8}"
