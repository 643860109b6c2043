"""``ensemble report``: every model of a run compared on the holdout split (the submission: ``final``).

The holdout was never used to train or select anything before this point. The leaderboard holds
the best trial of each baseline family, the top CNN trials, and the built ensemble with and
without test-time augmentation. The final model is the one with the best holdout accuracy; a tie
(same number of correct holdout digits) goes to the cheaper model (prediction time, then fit time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.combine.manifest import MANIFEST, Manifest, MemberEntry, read_manifest
from ensemble.combine.records import Comparison, EnsembleRow
from ensemble.combine.voting import soft_vote
from ensemble.errors import ArtifactError, NoModelError, UsageError
from ensemble.metrics import accuracy
from ensemble.report.stats import mcnemar, mcnemar_words, score
from ensemble.search.artifacts import ModelId, load_proba, trial_path
from ensemble.search.devices import merged_devices

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.report.final_members import FinalMember

CSV_COLUMNS = (
    "rank", "model", "kind", "family", "holdout_accuracy", "ci95_low", "ci95_high", "holdout_correct",
    "holdout_logloss", "ece", "val_accuracy", "fit_seconds", "predict_ms_per_1000", "params", "size_bytes", "n_train",
    "device",
)  # fmt: skip


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
    metrics: dict[str, Any] = field(default_factory=dict)
    #: which model the row is: a trial's, a row of the built ensemble, or None (the final model's refit)
    model: ModelId | EnsembleRow | None = None


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
    run: Run, storage: Any, *, top_cnn: int, say: Callable[[str], None] = print
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


def _cost_key(e: Entry) -> tuple[float, float]:
    inf = float("inf")
    return (e.predict_ms if e.predict_ms is not None else inf, e.fit_seconds if e.fit_seconds is not None else inf)


def rank(entries: list[Entry]) -> list[Entry]:
    """Best holdout accuracy first; equal correct counts go to the cheaper model."""
    return sorted(entries, key=lambda e: (-e.metrics["holdout_correct"], *_cost_key(e), e.name))


def tta_and_ensembling(manifest: Manifest | None) -> list[dict[str, Any]]:
    """What ensembling, TTA and the weights each added (from ``ensemble build``'s comparison)."""
    if manifest is None or manifest.weights is None:
        return []
    metrics = manifest.metrics or {}
    mode = manifest.weights.mode
    steps = [
        (Comparison.BEST_SINGLE, "best single CNN (identity view)"),
        (Comparison.TOP_K_EQUAL, "+ ensembling: equal-weight soft vote of the top CNNs"),
        (Comparison.TOP_K_EQUAL_TTA, "+ TTA: same vote over the kept TTA views"),
        (Comparison.final(mode), f"+ {mode} weights (final ensemble)"),
    ]
    out, prev = [], None
    for key, what in steps:
        r = metrics.get(key)
        if r is None or (out and key == out[-1]["key"]):
            continue
        h = r.holdout
        out.append(
            {
                "key": key,
                "step": what + (f" ({r.member})" if r.member else ""),
                "val_accuracy": r.val.accuracy if r.val else None,
                "holdout_accuracy": h.accuracy,
                "holdout_logloss": h.logloss,
                "gain": None if prev is None else h.accuracy - prev,
            }
        )
        prev = h.accuracy
    return out


@dataclass
class ReportResult:
    """What the report found: every model ranked on the holdout, and (once made) what was written."""

    entries: list[Entry]  # ranked, best first
    manifest: Manifest | None  # the built ensemble's, if any
    y: np.ndarray  # holdout labels
    gains: list[dict[str, Any]]  # what each ensembling step added on the holdout
    mcnemar: dict[str, Any] | None = None
    refit: Entry | None = None  # the final model refitted on all labels, when there is one
    final_members: list[FinalMember] = field(default_factory=list)  # the refit's CNNs, when there is a refit
    submission: Path | None = None
    submission_counts: list[int] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def final(self) -> Entry:
        """The final model: the best on the holdout (ties: the cheaper one)."""
        return self.entries[0]


def collect(
    run: Run, *, storage_url: str | None = None, top_cnn: int = 5, say: Callable[[str], None] = print
) -> ReportResult:
    """Score every model on the holdout and rank them."""
    from ensemble.search.storage import open_storage

    y = run.part("holdout")[1]
    rows, by_trial = trial_entries(run, open_storage(run, storage_url), top_cnn=top_cnn, say=say)
    ens, manifest = ensemble_entries(run, by_trial)
    entries = []
    for e in rows + ens:
        p = e.holdout()
        if p.shape != (len(y), 10):
            raise UsageError(f"{e.name}: holdout probabilities have shape {p.shape}, the run has {len(y)} rows")
        e.metrics = score(y, p)
        entries.append(e)
    if not entries:
        raise NoModelError(f"run '{run.name}' has no model with holdout predictions yet; run baselines or search first")
    ranked = rank(entries)
    return ReportResult(ranked, manifest, y, tta_and_ensembling(manifest))


def significance(result: ReportResult) -> dict[str, Any] | None:
    """McNemar between the best ensemble row and the best single model."""
    ranked = result.entries
    ens = [e for e in ranked if e.kind == "ensemble"]
    single = [e for e in ranked if e.kind != "ensemble"]
    if not ens or not single:
        return None
    y = result.y
    a, b = ens[0], single[0]
    t = mcnemar(y, a.holdout().argmax(1), b.holdout().argmax(1))
    return {**t, "a": a.name, "b": b.name, "words": mcnemar_words(t, a.name, b.name)}


def leaderboard_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """Rows of leaderboard.csv (rounded)."""
    out = []
    for i, e in enumerate(entries, start=1):
        m = e.metrics
        out.append(
            {
                "rank": i,
                "model": e.name,
                "kind": e.kind,
                "family": e.family,
                "holdout_accuracy": round(m["holdout_accuracy"], 6),
                "ci95_low": round(m["ci95_low"], 6),
                "ci95_high": round(m["ci95_high"], 6),
                "holdout_correct": m["holdout_correct"],
                "holdout_logloss": round(m["holdout_logloss"], 6) + 0.0,
                "ece": round(m["ece"], 6),
                "val_accuracy": None if e.val_accuracy is None else round(e.val_accuracy, 6),
                "fit_seconds": None if e.fit_seconds is None else round(float(e.fit_seconds), 2),
                "predict_ms_per_1000": None if e.predict_ms is None else round(e.predict_ms, 2),
                "params": e.params,
                "size_bytes": e.size_bytes,
                "n_train": e.n_train,
                "device": e.device,
            }
        )
    return out
