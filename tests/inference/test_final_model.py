"""Each kind of final model, loaded to predict new images, gives the test probabilities its run stored."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.data.runs import RunFolder
from ensemble.errors import ArtifactError
from ensemble.inference.final_model import load_final_model

pytest.importorskip("keras")


@pytest.mark.parametrize(
    ("name", "stored", "kind"),
    [
        ("cnn-trial-0000", "models/cnn/trial-0000/proba_test.npy", "cnn"),
        ("baseline-knn-trial-0000", "models/baseline-knn/trial-0000/proba_test.npy", "baseline"),
        ("ensemble (TTA)", "ensemble/proba_test.npy", "ensemble"),
    ],
)
def test_a_loaded_model_predicts_what_the_run_stored(tiny_finished_run, name: str, stored: str, kind: str) -> None:
    result, x_test = tiny_finished_run
    model = load_final_model(RunFolder(result.run, result.path), name)
    assert model.kind == kind
    np.testing.assert_allclose(model.predict_proba(x_test), np.load(result.path / stored), atol=2e-4)


def test_an_unknown_model_is_a_clear_error(tiny_finished_run) -> None:
    result, _ = tiny_finished_run
    with pytest.raises(ArtifactError, match="no model named"):
        load_final_model(RunFolder(result.run, result.path), "nonsense")
    with pytest.raises(ArtifactError, match="not on this machine"):
        load_final_model(RunFolder(result.run, result.path), "cnn-trial-0099")
