"""Final refit on every labeled digit: ensemble-full from the final model, used for the submission."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_built_run

from ensemble.combine.build import build_ensemble
from ensemble.inference.predict import load_ensemble, predict_proba
from ensemble.inference.refit import current_refit, refit_full
from ensemble.report.make import make_report

pytest.importorskip("keras")


@pytest.fixture
def built(runs_env: Path, tmp_path: Path):
    return tiny_built_run(tmp_path, epochs=3)


def test_refit_trains_every_cnn_member_on_all_labels(built) -> None:
    run = built
    said: list[str] = []
    m = refit_full(run, final="ensemble (TTA)", say=said.append)
    assert m is not None and m.refit_full is not None and m.refit_full.rows == 300 == len(run.dataset.y_train)
    assert len(m.cnns) == 2 and all(e.refit_full and e.refit_full.refit and e.refit_full.epochs == 3 for e in m.cnns)
    assert m.tta.views == ("identity", "shift:1:0") and m.metrics_before_refit and m.metrics is None
    ens = load_ensemble(run.path("ensemble-full"))  # hashes verify; members load
    p = predict_proba(ens, run.x_test)
    stored = np.load(run.path("ensemble-full", "proba_test.npy"))
    assert np.allclose(p, stored, atol=1e-5) and (p.argmax(1) == stored.argmax(1)).all()
    assert not run.path("ensemble-full", "proba_holdout.npy").exists()  # the refit has no holdout score
    assert any("60" not in s and "300 labeled digits x 3 epochs" in s for s in said)
    assert current_refit(run, "ensemble (TTA)") is not None and current_refit(run, "cnn-trial-0000") is None


def test_report_submits_the_refit_of_the_final_model_only(built) -> None:
    run = built
    result = make_report(run, gallery=0, say=lambda s: None)
    final = result.final.name
    if refit_full(run, final=final, say=lambda s: None) is None:
        pytest.skip(f"the tiny run's final model {final} is a baseline")
    again = make_report(run, gallery=0, say=lambda s: None)
    assert again.final.name == final and again.refit is not None
    labels = np.loadtxt(run.path("submission.csv"), delimiter=",", skiprows=1, dtype=int)[:, 1]
    assert (labels == np.load(run.path("ensemble-full", "proba_test.npy")).argmax(1)).all()
    assert "no holdout score of their own" in again.refit.note
    # a rebuilt ensemble is another source: its report no longer pairs with the old refit
    build_ensemble(run, top_k=1, weights="equal", tta="none", progress=False, say=lambda s: None)
    if final.startswith("ensemble"):
        assert current_refit(run, final) is None


@pytest.mark.slow
def test_members_refit_one_per_device_at_once_on_four_gpus(built, four_gpus: Path) -> None:
    run = built
    m = refit_full(run, final="ensemble (TTA)", say=lambda s: None, devices="all")
    records = [e.refit_full for e in m.cnns if e.refit_full is not None]
    assert len(records) == 2 and all(r.refit and r.epochs == 3 and r.rows == 300 for r in records)
    assert sorted(str(r.device) for r in records) == ["gpu:0", "gpu:1"]  # two members, two devices at once
    p = predict_proba(load_ensemble(run.path("ensemble-full")), run.x_test)
    assert np.allclose(p, np.load(run.path("ensemble-full", "proba_test.npy")), atol=1e-5)
