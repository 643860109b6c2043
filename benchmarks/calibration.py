"""Benchmark: does temperature scaling before the vote help? Finished runs' members, on their own holdout.

For each run, the members of its built ensemble (runs/NAME/ensemble/manifest.json: names, weights)
and the CNN trials of its study are read from their trial folders (identity view, no TTA):
``proba_val.npy`` and ``proba_holdout.npy``. Each model gets one temperature T, fitted on validation
(the T that minimises the log loss of softmax(log p / T)); the holdout is only scored. Then, on the
holdout, with and without the temperatures:

- the ensemble's vote with the weights the build chose;
- an equal vote of the same members;
- an equal vote of the run's CNN trials alone.

The reference is the same vote without temperatures, in the same run: a ratio of errors, and the
log loss. No model is trained; it takes seconds.

    python benchmarks/calibration.py --run q1 --run q2 --run q3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from machine import machine_line  # benchmarks/machine.py

EPS = 1e-7


def temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the log loss of ``p`` on labels ``y`` (searched on log T)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(p, EPS, 1.0))
    got = minimize_scalar(lambda t: _logloss(scaled(logp, np.exp(t)), y), bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(got.x))


def scaled(logp: np.ndarray, t: float) -> np.ndarray:
    z = logp / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def vote(parts: list[np.ndarray], weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), np.stack(parts), axes=1)


def run_rows(name: str) -> list[tuple[str, int, int, float, float]]:
    """(vote, errors raw, errors scaled, log loss raw, log loss scaled) for one run."""
    from ensemble.data.runs import open_run
    from ensemble.io import read_json
    from ensemble.search.artifacts import load_proba, trial_path

    run = open_run(name, say=lambda s: None)
    y_val, y_hold = run.part("val")[1], run.part("holdout")[1]
    manifest = read_json(run.path("ensemble", "manifest.json"))
    members = [(e["study"], int(e["trial"]), float(e["weight"])) for e in manifest["members"]]
    cnn_root = run.path("models", "cnn")
    cnns = [("cnn", int(p.name.split("-")[1]), 1.0) for p in sorted(cnn_root.glob("trial-*"))]
    rows = []
    for label, chosen, equal in (
        ("ensemble, build's weights", members, False),
        ("ensemble members, equal vote", members, True),
        ("every CNN trial, equal vote", cnns, True),
    ):
        raw, cal, weights = [], [], []
        for study, trial, weight in chosen:
            folder = trial_path(run, study, trial)
            if not (folder / "proba_holdout.npy").is_file():
                continue
            t = temperature(load_proba(folder, "val"), y_val)
            p = load_proba(folder, "holdout")
            raw.append(p)
            cal.append(scaled(np.log(np.clip(p, EPS, 1.0)), t))
            weights.append(1.0 if equal else weight)
        if not raw:
            continue
        a, b = vote(raw, weights), vote(cal, weights)
        errors = [int((v.argmax(1) != y_hold).sum()) for v in (a, b)]
        rows.append((f"{label} ({len(raw)})", *errors, _logloss(a, y_hold), _logloss(b, y_hold)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a finished run (repeat for several)")
    args = ap.parse_args(argv)
    print(f"machine: {machine_line()}")
    print(f"{'run':6} {'vote':40} {'errors':>7} {'T-scaled':>9} {'ratio':>6} {'logloss':>8} {'T-scaled':>9}")
    table = {}
    for name in args.run:
        for label, e0, e1, l0, l1 in run_rows(name):
            ratio = e1 / e0 if e0 else float("nan")
            print(f"{name:6} {label:40} {e0:7d} {e1:9d} {ratio:6.2f} {l0:8.4f} {l1:9.4f}")
            table.setdefault(label.split(" (")[0], []).append((e0, e1, l0, l1))
    print("mean over runs:")
    for label, got in table.items():
        e0, e1, l0, l1 = np.mean(np.asarray(got), axis=0)
        print(f"  {label:38} errors {e0:.1f} -> {e1:.1f} (ratio {e1 / e0:.2f}), log loss {l0:.4f} -> {l1:.4f}")
    print(json.dumps({k: [list(map(float, r)) for r in v] for k, v in table.items()}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
