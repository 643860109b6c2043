"""The leaderboard's rows: each model of a run with its holdout and test probabilities (loaded on demand).

A trial's row (the best trial of each baseline study, the top CNN trials) is found by its ``ModelId``;
the built ensemble gives one or two rows (:class:`~ensemble.combine.records.EnsembleRow`), with its TTA
views and with the identity view only, whose costs are those of its members' rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.combine.manifest import MANIFEST, Manifest, MemberEntry, read_manifest
from ensemble.combine.records import Comparison, EnsembleRow
from ensemble.combine.voting import soft_vote
from ensemble.errors import ArtifactError, UsageError
from ensemble.metrics import accuracy
from ensemble.report.stats import Score
from ensemble.search.artifacts import ModelId, load_proba, trial_path
from ensemble.search.devices import merged_devices

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run


@dataclass
class Entry:
    """One leaderboard row: a model and what it cost; probabilities are loaded on demand."""

    name: str
    kind: str  # baseline | cnn | ensemble
    family: str
    holdout: Callable[[], np.ndarray]
    test: Callable[[], np.ndarray]
    val_accuracy: float | None = None
    fit_seconds: float | None = None
    predict_ms: float | None = None  # per 1,000 images
    params: int | None = None
    size_bytes: int | None = None
    n_train: int | None = None
    device: str | None = None  # what it trained on: tensorflow/cpu, jax/gpu, cpu, cuda (XGBoost)
    note: str = ""
    metrics: Score | None = None  # its holdout scores, once the report scored it
    #: which model the row is: a trial's, a row of the built ensemble, or None (the final model's refit)
    model: ModelId | EnsembleRow | None = None

    @property
    def scored(self) -> Score:
        """The row's holdout scores (an error before the report scored it)."""
        if self.metrics is None:
            raise UsageError(f"{self.name}: not scored on the holdout yet")
        return self.metrics


def _trial_size(folder: Path) -> int | None:
    files = [f for f in folder.glob("*") if f.is_file() and not f.name.startswith("proba_") and f.suffix != ".json"]
    return sum(f.stat().st_size for f in files) or None


def _ms_per_1000(attrs: dict[str, Any], n_images: int) -> float | None:
    s = attrs.get("predict_seconds")
    return None if s is None or n_images == 0 else 1e6 * float(s) / n_images  # ms per 1,000 images


def proba_loader(folder: Path, part: str) -> Callable[[], np.ndarray]:
    """Loads the stored ``proba_{part}.npy`` of a trial or ensemble folder when called."""
    return lambda: load_proba(folder, part)


def trial_entries(
    run: Run, storage: optuna.storages.BaseStorage, *, top_cnn: int, say: Callable[[str], None] = print
) -> tuple[list[Entry], dict[ModelId, Entry]]:
    """The best trial of each baseline study and the top CNN trials (by validation accuracy).

    Trials whose files are not on this machine are left out, one line each, by the rule ``ensemble
    build`` uses (:func:`ensemble.combine.candidates.with_files_here`).
    """
    import optuna

    from ensemble.combine.candidates import study_candidates, with_files_here
    from ensemble.search.artifacts import BASELINE_PREFIX, CNN_STUDY

    names = optuna.get_all_study_names(storage=storage)
    n_pred = len(run.split.val) + len(run.split.holdout) + len(run.x_test)
    rows: list[Entry] = []
    by_trial: dict[ModelId, Entry] = {}
    for study in sorted(n for n in names if n.startswith(BASELINE_PREFIX)) + [CNN_STUDY] * (CNN_STUDY in names):
        cnn = study == CNN_STUDY
        cands = study_candidates(run, storage, study, "cnn" if cnn else "baseline")[: top_cnn if cnn else 1]
        for c in with_files_here(run, storage, cands, say, study=study, need=cnn):
            if not (c.folder / "proba_holdout.npy").is_file():
                raise ArtifactError(f"{c.folder / 'proba_holdout.npy'}: missing probabilities file of trial {c.name}")
            a = c.attrs
            e = Entry(
                name=c.name,
                kind=c.kind,
                family="cnn" if c.kind == "cnn" else a.get("family", study[len(BASELINE_PREFIX) :]),
                holdout=proba_loader(c.folder, "holdout"),
                test=proba_loader(c.folder, "test"),
                val_accuracy=c.val_accuracy,
                fit_seconds=a.get("train_seconds", a.get("fit_seconds")),
                predict_ms=_ms_per_1000(a, n_pred),
                params=a.get("params"),
                size_bytes=_trial_size(c.folder),
                n_train=a.get("n_train"),
                device=_trained_on(a, c.kind),
                model=ModelId(study, c.number),
            )
            rows.append(e)
            by_trial[ModelId(study, c.number)] = e
    return rows, by_trial


def _trained_on(attrs: dict[str, Any], kind: str) -> str | None:
    if kind == "cnn":
        if "backend" not in attrs or "device" not in attrs:
            return None
        seen = attrs.get("backend_device")  # a GPU slot whose backend saw no GPU trained on the CPU
        return f"{attrs['backend']}/{'cpu' if seen == 'cpu' else attrs['device']}"
    return attrs.get("device")


def _weighted(parts: list[tuple[float, Callable[[], np.ndarray]]]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return soft_vote([f() for _, f in parts], [w for w, _ in parts]).astype(np.float32)

    return load


def _members_ms(members: tuple[MemberEntry, ...], by_trial: dict[ModelId, Entry], *, cnn: bool) -> float:
    found = [by_trial.get(e.model_id) for e in members if e.is_cnn == cnn and e.model_id is not None]
    return sum(float(e.predict_ms or 0) for e in found if e is not None)


def _trial_rows(members: tuple[MemberEntry, ...], by_trial: dict[ModelId, Entry]) -> list[Entry]:
    """The leaderboard rows of the ensemble's members, found by their trial's id (members not listed: left out)."""
    return [by_trial[e.model_id] for e in members if e.model_id is not None and e.model_id in by_trial]


def _member_folder(run: Run, folder: Path, e: MemberEntry) -> Path:
    """Where a member's own val/holdout/test probabilities are: its trial folder (a CNN), or in the ensemble."""
    if e.is_cnn:
        if e.study is None or e.trial is None:
            raise ArtifactError(f"{folder / MANIFEST}: CNN member {e.name} names no study and trial")
        return trial_path(run, e.study, e.trial)
    return folder / e.name if e.probas is None else folder / Path(e.probas["val"]).parent


def ensemble_entries(run: Run, by_trial: dict[ModelId, Entry]) -> tuple[list[Entry], Manifest | None]:
    """The built ensemble (runs/NAME/ensemble) with its TTA views, and the same weights without TTA."""
    folder = run.path("ensemble")
    if not (folder / MANIFEST).is_file():
        return [], None
    m = read_manifest(folder)
    views = list(m.tta.views)
    members = m.members
    cnn_ms = _members_ms(members, by_trial, cnn=True)
    base_ms = _members_ms(members, by_trial, cnn=False)
    rows = _trial_rows(members, by_trial)
    params = sum(e.params or 0 for e in members) or None
    size = sum(f.stat().st_size for f in (folder / "members").rglob("*") if f.is_file() and "proba_" not in f.name)
    if m.weights is None:
        raise ArtifactError(f"{folder / MANIFEST}: 'weights' is missing")
    mode = m.weights.mode
    label = f"{len(members)} members, {mode} weights"
    common = {
        "kind": "ensemble",
        "family": "ensemble",
        "fit_seconds": sum(float(r.fit_seconds or 0) for r in rows),
        "params": params,
        "size_bytes": size,
        "device": merged_devices(r.device for r in rows if r.device),
    }
    final = (m.metrics or {}).get(Comparison.final(mode))
    val = final.val.accuracy if final and final.val else None
    out = []
    plain = [(e.weight, _member_folder(run, folder, e)) for e in members]
    if all((t / "proba_holdout.npy").is_file() for _, t in plain):
        val_plain = _weighted([(w, proba_loader(t, "val")) for w, t in plain])()
        acc_plain = accuracy(run.part("val")[1], val_plain)
        out.append(
            Entry(
                name=EnsembleRow.NO_TTA.value,
                val_accuracy=acc_plain,
                holdout=_weighted([(w, proba_loader(t, "holdout")) for w, t in plain]),
                test=_weighted([(w, proba_loader(t, "test")) for w, t in plain]),
                predict_ms=(cnn_ms + base_ms) or None,
                note=f"{label}, identity view only",
                model=EnsembleRow.NO_TTA,
                **common,
            )
        )
    if views != ["identity"] or not out:
        row = EnsembleRow.TTA if views != ["identity"] else EnsembleRow.ENSEMBLE
        out.append(
            Entry(
                name=row.value,
                holdout=proba_loader(folder, "holdout"),
                test=proba_loader(folder, "test"),
                val_accuracy=val,
                predict_ms=(cnn_ms * len(views) + base_ms) or None,
                note=f"{label}, {len(views)} TTA views: {','.join(views)}",
                model=row,
                **common,
            )
        )
    return out, m
