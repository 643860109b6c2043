"""What a trial measures besides its accuracy: its speed at the end, its overhead, its learning-curve picture."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def curve_png(path: Path, curve: list[float], number: int) -> None:
    """The trial's validation accuracy per epoch as a small PNG (optuna-dashboard previews it as an artifact).

    Drawn on its own ``Figure`` (not pyplot's global state): trials that run at once draw in several threads.
    """
    if not curve:
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2.6), dpi=80)
    ax = fig.subplots()
    ax.plot(range(1, len(curve) + 1), curve, marker=".")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"trial {number}")
    fig.tight_layout()
    fig.savefig(path, format="png")


def recent_speed(ends: list[float], n_train: int) -> dict[str, float]:
    """Images/s over the trial's last epochs (validation included): its speed once other work stopped."""
    steps = np.diff(ends[-4:])
    return {"recent_images_per_second": round(n_train / float(np.median(steps)), 1)} if len(steps) else {}


def overhead(started: float, ends: list[float], train_seconds: float) -> dict[str, float]:
    """The trial's wall time so far, and the part of it that was not steady training (``overhead_seconds``).

    Steady training: the epochs run x the median time between epoch ends (the first epoch's extra time,
    compiling, goes to the overhead, with process start-up, data loading, predicting and saving). With one
    epoch, the training time the trainer measured (``train_seconds``) stands in.
    """
    wall = time.perf_counter() - started
    steps = np.diff(ends)
    training = len(ends) * float(np.median(steps)) if len(steps) else float(train_seconds)
    return {"trial_seconds": round(wall, 3), "overhead_seconds": round(max(0.0, wall - training), 3)}
