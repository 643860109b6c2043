"""A run's final model, loaded to predict new images: the report's choice, as its submission was made.

The report names the final model (``summary.json``). It is one of:

- an ensemble row (``ensemble``, ``ensemble (TTA)``, ``ensemble (no TTA)``): the ensemble folder, or its
  refit on every label (``ensemble-full``) when that is what the submission came from;
- a CNN trial (``cnn-trial-0003``): its refit in ``ensemble-full`` when there is one, else the trial's model;
- a baseline trial (``baseline-svm-trial-0002``): the trial's saved model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.combine.records import EnsembleRow
from ensemble.combine.tta import IDENTITY
from ensemble.data.arrays import as_images
from ensemble.errors import ArtifactError
from ensemble.search.artifacts import ModelId

if TYPE_CHECKING:
    import keras

    from ensemble.data.runs import Run, RunFolder
    from ensemble.inference.predict import Ensemble
    from ensemble.search.baselines.models import ProbaModel


@dataclass
class FinalModel:
    """The final model of a run: ``predict_proba(images)`` gives float32 (N, 10)."""

    name: str
    #: the folder it was loaded from (an ensemble folder or a trial folder)
    source: Path
    kind: str
    model: Ensemble | keras.Model | ProbaModel
    tta: bool = True

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """Class probabilities of (N, 28, 28) or (N, 784) images with raw 0-255 pixels."""
        images = as_images(images, "images")
        if self.kind == "ensemble":
            from ensemble.inference.predict import predict_proba

            return predict_proba(self.model, images, tta=self.tta, batch_size=batch_size)
        if self.kind == "cnn":
            from ensemble.combine.members import member_probas

            return member_probas([self.model], images, [IDENTITY], batch_size=batch_size)[0].mean(axis=0)
        from ensemble.search.baselines.models import full_proba

        return full_proba(self.model, images).astype(np.float32)


def load_final_model(run: Run | RunFolder, final: str) -> FinalModel:
    """Load ``final`` (a report row's name) of ``run``, hash-checked where it comes from an ensemble folder."""
    from ensemble.inference.predict import load_ensemble
    from ensemble.inference.refit import FOLDER, current_refit

    if current_refit(run, final) is not None:
        folder = run.path(FOLDER)
        return FinalModel(final, folder, "ensemble", load_ensemble(folder))
    row = EnsembleRow.parse(final)
    if row is not None:
        folder = run.path("ensemble")
        return FinalModel(final, folder, "ensemble", load_ensemble(folder), tta=row is not EnsembleRow.NO_TTA)
    model = ModelId.parse(final)
    if model is None:
        raise ArtifactError(f"{run.path()}: no model named {final!r} to load")
    return _trial_model(run, final, model.study, model.trial)


def _trial_model(run: Run | RunFolder, final: str, study: str, number: int) -> FinalModel:
    from ensemble.search.artifacts import trial_path

    folder = trial_path(run, study, number)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: the files of {final} are not on this machine (fetch them with ensemble build)")
    if study == "cnn":
        from ensemble.combine.members import load_keras_model, prediction_copy

        model = prediction_copy(load_keras_model(folder / "model.keras", final), final)
        return FinalModel(final, folder, "cnn", model, tta=False)
    from ensemble.search.baselines.saved import family_kind, load_model

    return FinalModel(final, folder, "baseline", load_model(folder, family_kind(study)), tta=False)
