"""The ensemble folder's manifest: ``manifest.json`` as typed, frozen records, read and written in one place.

``manifest.json`` lists the members, their weights, the TTA views and the sha256 of every artifact,
so an ensemble folder is self-contained (the checks: :mod:`ensemble.combine.verify`). ``ensemble build``
writes it (``runs/NAME/ensemble``); the final refit and the final stage write the same records
(``runs/NAME/ensemble-full``). :meth:`Manifest.to_json` writes the keys in the order they always had, so
``Manifest.from_json(data).to_json() == data`` for every manifest written, old ones included.
"""

from __future__ import annotations

import hashlib
import platform
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble import __version__
from ensemble.combine.jsonfields import Fields, JsonObject, compact
from ensemble.combine.records import (
    DataInfo,
    KerasInfo,
    MemberRefit,
    Metrics,
    RefitFull,
    TrainValRefit,
    Tta,
    Weights,
    metrics_from_json,
    metrics_to_json,
)
from ensemble.errors import ArtifactError
from ensemble.io import read_json, write_json
from ensemble.search.artifacts import ModelId, sha256_file

if TYPE_CHECKING:
    from ensemble.data.runs import Run

MANIFEST = "manifest.json"
FORMAT = "ensemble-manifest/1"
N_CLASSES = 10
INPUT_SPEC = "float32 (N, 28, 28, 1) raw pixel values 0-255; rescaling is inside each model"
PREPROCESSING = {"input": INPUT_SPEC, "views": "applied to raw pixels before each model"}
KINDS = ("cnn", "baseline")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class MemberEntry:
    """One member of an ensemble folder: a CNN (``file``, ``config``) or a baseline (``probas``, ``model_dir``).

    Members chosen by ``ensemble build`` carry their validation scores; a CNN among them also its
    ``--refit`` record and cost (``refit`` and ``config`` are written even when null). In ``ensemble-full``
    every member has its ``refit_full`` record (null for a baseline) and a CNN its test probabilities;
    a member the final stage added names the configuration it trains (``extra_of``) and lists its test
    probabilities before its ``refit_full`` record (the order that stage has always written).
    """

    name: str
    kind: str
    weight: float
    file: str | None = None
    config: str | None = None
    probas: dict[str, str] | None = None
    study: str | None = None
    model_dir: str | None = None
    trial: int | None = None
    extra_of: str | None = None
    val_accuracy: float | None = None
    val_logloss: float | None = None
    refit: TrainValRefit | None = None
    params: int | None = None
    flops: int | None = None  # per image
    refit_full: MemberRefit | None = None
    test_proba: str | None = None  # ensemble-full: the CNN's test probabilities, mean over the TTA views
    group_weight: float | None = None  # ensemble-full: its configuration's weight, shared with its added members

    @property
    def is_cnn(self) -> bool:
        return self.kind == "cnn"

    @property
    def model_id(self) -> ModelId | None:
        """The trial it comes from (an added member: the trial whose configuration it trains)."""
        return None if self.study is None or self.trial is None else ModelId(self.study, self.trial)

    @property
    def chosen(self) -> bool:
        """Whether ``ensemble build`` chose it on validation (it has validation scores)."""
        return self.val_accuracy is not None

    @classmethod
    def from_json(cls, f: Fields) -> MemberEntry:
        kind = f.get("kind", str)
        if kind not in KINDS:
            raise f.fail("kind", " or ".join(KINDS))
        probas, refit, full = f.opt_sub("probas"), f.opt_sub("refit"), f.opt_sub("refit_full")
        return cls(
            name=f.get("name", str),
            kind=kind,
            weight=f.get("weight", float),
            file=f.opt("file", str),
            config=f.opt("config", str),
            probas=None if probas is None else {k: probas.get(k, str) for k in probas.obj},
            study=f.opt("study", str),
            model_dir=f.opt("model_dir", str),
            trial=f.opt("trial", int),
            extra_of=f.opt("extra_of", str),
            val_accuracy=f.opt("val_accuracy", float),
            val_logloss=f.opt("val_logloss", float),
            refit=refit and TrainValRefit.from_json(refit),
            params=f.opt("params", int),
            flops=f.opt("flops", int),
            refit_full=full and MemberRefit.from_json(full),
            test_proba=f.opt("test_proba", str),
            group_weight=f.opt("group_weight", float),
        )

    def to_json(self, *, full: bool = False) -> JsonObject:
        """``full``: in an ``ensemble-full`` manifest, where every member has a ``refit_full`` key."""
        built = self.is_cnn and self.chosen  # its config and --refit record are written even when null
        out = compact([("name", self.name), ("kind", self.kind), ("weight", self.weight), ("file", self.file)])
        if built or self.config is not None:
            out["config"] = self.config
        out |= compact([("probas", self.probas and dict(self.probas)), ("study", self.study)])
        out |= compact([("model_dir", self.model_dir), ("trial", self.trial), ("extra_of", self.extra_of)])
        out |= compact([("val_accuracy", self.val_accuracy), ("val_logloss", self.val_logloss)])
        if built:
            out["refit"] = self.refit and self.refit.to_json()
        out |= compact([("params", self.params), ("flops", self.flops)])
        if self.extra_of:  # an added member has always listed its test probabilities first
            out |= compact([("test_proba", self.test_proba)])
        if full:
            out["refit_full"] = self.refit_full and self.refit_full.to_json()
        return out | compact([("test_proba", self.test_proba), ("group_weight", self.group_weight)])


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an ensemble folder (``ensemble``) or its refit on every label (``ensemble-full``)."""

    format: str
    members: tuple[MemberEntry, ...]
    tta: Tta
    artifacts: dict[str, str]  # relative path -> sha256 of every other file in the folder
    created: str | None = None
    run: str | None = None
    weights: Weights | None = None
    preprocessing: dict[str, str] | None = None
    keras: KerasInfo | None = None
    versions: dict[str, str] | None = None
    data: DataInfo | None = None
    selection: str | None = None
    metrics: Metrics | None = None  # what ensemble build compared (not in ensemble-full)
    metrics_before_refit: Metrics | None = None  # ensemble-full: the source's metrics
    refit_full: RefitFull | None = None  # ensemble-full: what it was refitted from

    @property
    def cnns(self) -> tuple[MemberEntry, ...]:
        return tuple(e for e in self.members if e.is_cnn)

    @property
    def baselines(self) -> tuple[MemberEntry, ...]:
        return tuple(e for e in self.members if not e.is_cnn)

    @property
    def extras(self) -> tuple[MemberEntry, ...]:
        """The members the final stage added to ``ensemble-full``."""
        return tuple(e for e in self.members if e.extra_of)

    def member(self, name: str) -> MemberEntry:
        for e in self.members:
            if e.name == name:
                return e
        raise ArtifactError(f"{MANIFEST}: no member named {name!r}")

    @classmethod
    def from_json(cls, data: object, where: str = MANIFEST) -> Manifest:
        """Read a manifest's JSON; ``where`` (the file) starts any error, with the key that is wrong."""
        f = Fields(data, where)
        if f.obj.get("format") != FORMAT:
            raise ArtifactError(f"{where}: not an ensemble manifest (format {FORMAT} expected)")
        sub = {k: f.opt_sub(k) for k in ("weights", "keras", "data", "refit_full", "preprocessing", "versions")}
        return cls(
            FORMAT,
            tuple(MemberEntry.from_json(e) for e in f.items("members")),
            Tta.from_json(f.sub("tta")),
            _artifacts(f),
            f.opt("created", str),
            f.opt("run", str),
            sub["weights"] and Weights.from_json(sub["weights"]),
            sub["preprocessing"] and {k: sub["preprocessing"].get(k, str) for k in sub["preprocessing"].obj},
            sub["keras"] and KerasInfo.from_json(sub["keras"]),
            sub["versions"] and {k: sub["versions"].get(k, str) for k in sub["versions"].obj},
            sub["data"] and DataInfo.from_json(sub["data"]),
            f.opt("selection", str),
            metrics_from_json(f.opt_sub("metrics")),
            metrics_from_json(f.opt_sub("metrics_before_refit")),
            sub["refit_full"] and RefitFull.from_json(sub["refit_full"]),
        )

    def to_json(self) -> JsonObject:
        full = self.refit_full is not None
        return compact(
            [
                ("format", self.format),
                ("created", self.created),
                ("run", self.run),
                ("members", [e.to_json(full=full) for e in self.members]),
                ("weights", self.weights and self.weights.to_json()),
                ("tta", self.tta.to_json()),
                ("preprocessing", self.preprocessing and dict(self.preprocessing)),
                ("keras", self.keras and self.keras.to_json()),
                ("versions", self.versions and dict(self.versions)),
                ("data", self.data and self.data.to_json()),
                ("selection", self.selection),
                ("metrics", metrics_to_json(self.metrics)),
                ("metrics_before_refit", metrics_to_json(self.metrics_before_refit)),
                ("refit_full", self.refit_full and self.refit_full.to_json()),
                ("artifacts", dict(self.artifacts)),
            ]
        )


def _artifacts(f: Fields) -> dict[str, str]:
    table = f.obj.get("artifacts")
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in table.items()
    ):
        raise ArtifactError(f"{f.where}: 'artifacts' must map relative paths to sha256 hex digests")
    return dict(table)


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of uint8 images and their shape: identifies a test set."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    return h.hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """``folder/manifest.json``, checked field by field: an ArtifactError names the file and the key."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; expected an ensemble folder written by `ensemble build`")
    try:
        data = read_json(mpath)
    except ValueError as exc:
        raise ArtifactError(f"{mpath}: not valid JSON ({exc})") from exc
    return Manifest.from_json(data, str(mpath))


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record the sha256 of every file in ``folder`` (by relative path), write ``manifest.json``, return it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = replace(manifest, artifacts={p.relative_to(folder).as_posix(): sha256_file(p) for p in files})
    write_json(folder / MANIFEST, manifest.to_json())
    return manifest


def versions() -> dict[str, str]:
    import importlib.metadata as md

    import keras

    out = {"python": platform.python_version(), "ensemble": __version__, "numpy": np.__version__}
    out["keras"] = keras.version()
    for pkg in ("tensorflow", "tensorflow-cpu", "jax", "torch", "optuna"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def keras_info() -> KerasInfo:
    """The Keras backend and version of this process."""
    import keras

    return KerasInfo(keras.backend.backend(), keras.version())


def new_manifest(run: Run, members: list[MemberEntry], weights: Weights, tta: Tta, metrics: Metrics) -> Manifest:
    """The manifest of a new ensemble folder of ``run`` (its artifacts are listed by :func:`write_manifest`)."""
    data = DataInfo(
        run.meta["data"]["fingerprint"],
        images_fingerprint(run.x_test),
        len(run.x_test),
        {k: len(getattr(run.split, k)) for k in ("train", "val", "holdout")},
    )
    return Manifest(
        FORMAT,
        tuple(members),
        tta,
        {},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        run=run.name,
        weights=weights,
        preprocessing=dict(PREPROCESSING),
        keras=keras_info(),
        versions=versions(),
        data=data,
        selection="members, views and weights chosen on validation; holdout only reported",
        metrics=metrics,
    )
