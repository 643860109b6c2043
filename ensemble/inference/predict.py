"""Load a built ensemble (hash-checked) and predict class probabilities, with TTA.

The ensemble folder is self-contained: ``manifest.json`` lists the members, their weights,
the TTA views and the sha256 of every artifact, so ``ensemble predict`` works on a machine
that never saw the run. Members are ``.keras`` files, which load under any Keras 3 backend
(TensorFlow, JAX, torch) whatever backend trained them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.combine.manifest import MANIFEST, Manifest, MemberEntry, images_fingerprint, read_manifest
from ensemble.combine.members import (
    load_keras_model,
    member_probas,
    prediction_copy,
    progress_bar,
)
from ensemble.combine.tta import IDENTITY
from ensemble.combine.verify import read_verified, verify_artifacts
from ensemble.combine.voting import soft_vote
from ensemble.data.arrays import as_images
from ensemble.errors import ArtifactError, DataError, one_line
from ensemble.inference.placement import OnDevice, on, prediction_devices

if TYPE_CHECKING:
    import keras

# ------------------------------------------------------------------------------ ensemble


@dataclass
class Member:
    """One ensemble member: a Keras model (CNN) or stored probabilities (baseline)."""

    name: str
    kind: str
    weight: float
    file: str | None = None
    probas: dict[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    model: keras.Model | OnDevice | None = None
    #: A baseline's model files as loaded: file name -> path in the manifest (picked from the manifest).
    model_files: dict[str, str] = field(default_factory=dict)


@dataclass
class Ensemble:
    """A loaded, hash-verified ensemble folder."""

    folder: Path
    manifest: Manifest
    members: list[Member]
    devices: int = 1  # devices its CNN members predict on (JAX: spread over the local devices)

    @property
    def views(self) -> list[str]:
        return list(self.manifest.tta.views)


def _member(folder: Path, entry: MemberEntry, hashed: Mapping[str, str]) -> Member:
    """One manifest member entry, every file it names hash-listed; a baseline's model files picked here."""
    mpath = folder / MANIFEST
    m = Member(entry.name, entry.kind, entry.weight, entry.file, dict(entry.probas or {}), entry.model_dir)
    for rel in ([m.file] if m.file else []) + list(m.probas.values()):
        if not isinstance(rel, str) or rel not in hashed:
            raise ArtifactError(f"{folder / str(rel)}: member {m.name}'s file has no sha256 in {MANIFEST}")
    if m.model_dir:
        from ensemble.search.baselines.saved import family_kind, model_files

        prefix = f"{m.model_dir}/"
        listed = [r[len(prefix) :] for r in hashed if r.startswith(prefix) and "/" not in r[len(prefix) :]]
        names = model_files(listed, family_kind(entry.study), where=f"{folder / m.model_dir}")
        m.model_files = {n: prefix + n for n in names}
    if m.kind == "cnn" and not m.file:
        raise ArtifactError(f"{mpath}: CNN member {m.name} has no model file")
    return m


def load_ensemble(folder: str | Path, *, load_models: bool = True) -> Ensemble:
    """Read ``manifest.json``, verify every artifact's hash, then load the members from verified bytes."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    verify_artifacts(folder, manifest)
    if not manifest.members:
        raise ArtifactError(f"{folder / MANIFEST}: no members")
    members = [_member(folder, entry, manifest.artifacts) for entry in manifest.members]
    cnns = [m for m in members if m.file] if load_models else []
    devices = prediction_devices() if len(cnns) > 1 else []
    for i, m in enumerate(cnns):  # under JAX with several devices: member i on device i mod D
        device = devices[i % len(devices)] if devices else None
        data = read_verified(folder, manifest, m.file)
        with on(device):
            model = prediction_copy(load_keras_model(folder / m.file, m.name, data=data), m.name)
        m.model = model if device is None else OnDevice(model, device)
    return Ensemble(folder, manifest, members, devices=max(1, min(len(devices), len(cnns))))


def _baseline(ens: Ensemble, m: Member, images: np.ndarray) -> np.ndarray:
    """A baseline's probabilities: stored ones for the run's own test set, else its saved model's.

    Both come from bytes read once and checked against the manifest; only the files the manifest
    lists for the member are read, never whatever else sits in its folder.
    """
    data = ens.manifest.data
    test_fp, n_test = (data.test_fingerprint, data.n_test) if data else (None, None)
    fp = images_fingerprint(images)
    if "test" in m.probas and fp == test_fp:
        rel = m.probas["test"]
        raw = read_verified(ens.folder, ens.manifest, rel)
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as exc:
            raise ArtifactError(f"{ens.folder / rel}: not a .npy array ({one_line(exc)})") from exc
    if m.model_files:
        try:
            from ensemble.search.baselines.models import full_proba
            from ensemble.search.baselines.saved import load_saved
        except ImportError as exc:
            raise ArtifactError(f"member {m.name}: cannot load baseline models here ({exc})") from exc
        blobs = {name: read_verified(ens.folder, ens.manifest, rel) for name, rel in m.model_files.items()}
        return full_proba(load_saved(blobs, ens.folder / str(m.model_dir)), images).astype(np.float32)
    raise DataError(
        f"member {m.name} is a baseline with stored probabilities only; it can predict the run's own test set "
        f"(fingerprint {str(test_fp)[:16]}, {n_test} images) but these "
        f"{len(images)} images have fingerprint {fp[:16]}; rebuild without --include-baselines"
    )


def predict_proba(
    ens: Ensemble,
    images: np.ndarray,
    *,
    tta: bool = True,
    batch_size: int = 128,
    progress: bool = False,
    workers: int | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Ensemble probabilities (N, 10): weighted mean over members of their mean over views.

    ``precision``: see :func:`member_probas` (float32 unless bfloat16 is asked for).
    """
    images = as_images(images, "test images")
    views = ens.views if tta else [IDENTITY]
    cnns = [m for m in ens.members if m.model is not None]
    parts: list[np.ndarray] = []
    if cnns:
        with progress_bar(len(images), f"predict {len(cnns)} models x {len(views)} views", progress) as adv:
            probs = member_probas(
                [m.model for m in cnns],
                images,
                views,
                batch_size=batch_size,
                advance=adv,
                names=[m.name for m in cnns],
                workers=workers if workers is not None or ens.devices == 1 else ens.devices,  # a thread per device
                precision=precision,
            )
        parts += [p.mean(axis=0) for p in probs]
    baselines = [m for m in ens.members if m.model is None]
    parts += [_baseline(ens, m, images) for m in baselines]
    return soft_vote(parts, [m.weight for m in cnns + baselines]).astype(np.float32)
