"""The report's figures are real PNG images (or None when there is nothing to draw)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from ensemble.report import plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _agg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")


def study_with_curves(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        for epoch in range(3):
            t.report(0.9 + 0.01 * epoch + 0.001 * i, epoch)
        study.tell(t, 0.92 + 0.001 * i)
    return study


def test_confusion_matrix_and_gallery() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    proba = np.eye(10)[np.where(rng.random(200) < 0.9, y, (y + 1) % 10)]
    assert plots.confusion_matrix_png(y, proba.argmax(1), "cm").startswith(PNG)
    images = rng.integers(0, 256, (200, 28, 28)).astype(np.uint8)
    png, shown = plots.gallery_png(images, y, proba, limit=8)
    wrong = int((proba.argmax(1) != y).sum())
    assert png is not None and png.startswith(PNG) and shown == min(8, wrong)
    assert plots.gallery_png(images, y, np.eye(10)[y], limit=8) == (None, 0)  # nothing wrong: no gallery


def test_study_figures_need_finished_trials() -> None:
    empty = optuna.create_study(direction="maximize")
    assert plots.history_png(empty) is None and plots.learning_curves_png(empty) is None
    study = study_with_curves(4)
    assert plots.history_png(study).startswith(PNG)
    assert plots.learning_curves_png(study).startswith(PNG)
