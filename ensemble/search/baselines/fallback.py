"""The fallback model of a run cut short before any model finished: k-nearest neighbours, in seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ensemble.search.artifacts import FALLBACK_STUDY, name_metric

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def fallback_model(run: Run, storage_url: str | None, log: Callable[[str], None], rows: int = 5000) -> None:
    """A k-nearest-neighbours model on at most ``rows`` training digits (seconds), saved as a baseline trial."""
    import optuna
    from sklearn.neighbors import KNeighborsClassifier

    from ensemble.search.artifacts import save_probas, trial_dir, upload_trial
    from ensemble.search.baselines.models import full_proba
    from ensemble.search.baselines.study import subsample
    from ensemble.search.storage import open_storage

    (x, y), (xv, yv) = run.part("train"), run.part("val")
    keep = subsample(y, rows, seed=0)
    t0 = time.perf_counter()
    model = KNeighborsClassifier(n_neighbors=3, weights="distance").fit(x[keep].reshape(len(keep), -1) / 255.0, y[keep])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = {"val": xv, "holdout": run.part("holdout")[0], "test": run.x_test}
    probas = {k: full_proba(model, a.reshape(len(a), -1) / 255.0) for k, a in parts.items()}
    predict_s = time.perf_counter() - t0
    study = optuna.create_study(
        study_name=FALLBACK_STUDY, storage=open_storage(run, storage_url), direction="maximize", load_if_exists=True
    )
    name_metric(study)
    folder = trial_dir(run, FALLBACK_STUDY, len(study.trials))
    save_probas(folder, probas)
    from ensemble.metrics import accuracy, log_loss

    acc = accuracy(yv, probas["val"])
    attrs = {
        "family": "fallback-knn",
        "stage": "fallback",
        "val_accuracy": acc,
        "val_logloss": log_loss(yv, probas["val"]),
        "fit_seconds": round(fit_s, 3),
        "predict_seconds": round(predict_s, 3),
        "artifact_dir": str(folder),
        "n_train": int(len(keep)),
    }
    study.add_trial(optuna.trial.create_trial(value=acc, user_attrs=attrs))
    upload_trial(study.trials[-1], folder, storage=study._storage)  # to the artifact store, when there is one
    log(f"fallback kNN on {len(keep):,} rows: val accuracy {acc:.4f} ({fit_s + predict_s:.0f}s)")
