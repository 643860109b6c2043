"""The ensemble folder ``runs/NAME/ensemble/``: members copied (or saved, when refitted), probabilities,
manifest, written beside the current folder and swapped in whole."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.combine.candidates import Candidate
from ensemble.combine.manifest import Manifest, MemberEntry, new_manifest, write_manifest
from ensemble.combine.records import Metrics, TrainValRefit, Tta, Weights
from ensemble.io import rebuilt_dir, save_npy
from ensemble.search.baselines.saved import SAVED_FILES
from ensemble.search.cnn.simplify import model_cost, save_for_inference

if TYPE_CHECKING:
    import keras

    from ensemble.data.runs import Run


def write_folder(
    run: Run,
    cnns: list[tuple[Candidate, float, keras.Model, TrainValRefit | None]],
    baselines: list[tuple[Candidate, float]],
    *,
    probas: dict[str, np.ndarray],
    weights: Weights,
    tta: Tta,
    metrics: Metrics,
    refit: bool,
) -> Manifest:
    """Write ``runs/NAME/ensemble/`` beside the current one, then swap it in; return its manifest.

    ``cnns``: (candidate, weight, its Keras model, its refit record) for each kept CNN; ``baselines``:
    (candidate, weight). ``probas``: the ensemble's val/holdout/test probabilities.
    """
    with rebuilt_dir(run.path("ensemble")) as tmp:
        (tmp / "members").mkdir(parents=True)
        entries = [_copy_cnn(tmp, c, weight, model, record, refit) for c, weight, model, record in cnns]
        entries += [_copy_baseline(tmp, b, weight) for b, weight in baselines]
        for part, p in probas.items():
            save_npy(tmp / f"proba_{part}.npy", np.asarray(p, np.float32))
        manifest = write_manifest(tmp, new_manifest(run, entries, weights, tta, metrics))
    return manifest


def _copy_cnn(
    tmp: Path, c: Candidate, weight: float, model: keras.Model, refit: TrainValRefit | None, refitted: bool
) -> MemberEntry:
    rel = f"members/{c.name}.keras"
    if refitted:
        save_for_inference(model, tmp / rel)
    else:
        shutil.copy2(c.folder / "model.keras", tmp / rel)
    has_config = (c.folder / "config.json").is_file()
    if has_config:
        shutil.copy2(c.folder / "config.json", tmp / f"members/{c.name}.config.json")
    cost = model_cost(model)
    return MemberEntry(
        name=c.name,
        kind="cnn",
        weight=weight,
        file=rel,
        config=f"members/{c.name}.config.json" if has_config else None,
        study=c.study,
        trial=c.number,
        val_accuracy=c.val_accuracy,
        val_logloss=c.val_logloss,
        refit=refit,
        params=cost["params"],
        flops=cost["flops"],
    )


def _copy_baseline(tmp: Path, b: Candidate, weight: float) -> MemberEntry:
    (tmp / "members" / b.name).mkdir()
    probas = {}
    for part in ("val", "holdout", "test"):
        probas[part] = f"members/{b.name}/proba_{part}.npy"
        shutil.copy2(b.folder / f"proba_{part}.npy", tmp / probas[part])
    model_files = [f.name for f in b.folder.iterdir() if f.is_file() and f.name in SAVED_FILES]
    for f in model_files + ["config.json"] * (b.folder / "config.json").is_file():
        shutil.copy2(b.folder / f, tmp / "members" / b.name / f)
    return MemberEntry(
        name=b.name,
        kind="baseline",
        weight=weight,
        probas=probas,
        study=b.study,
        model_dir=f"members/{b.name}" if model_files else None,
        trial=b.number,
        val_accuracy=b.val_accuracy,
        val_logloss=b.val_logloss,
    )
