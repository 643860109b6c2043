"""``ensemble report``: every model of a run compared on the holdout split (the submission: ``final``).

The holdout was never used to train or select anything before this point. The leaderboard holds
the best trial of each baseline family, the top CNN trials, and the built ensemble with and
without test-time augmentation. The final model is the one with the best holdout accuracy; a tie
(same number of correct holdout digits) goes to the cheaper model (prediction time, then fit time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from ensemble.combine.manifest import Manifest
from ensemble.combine.records import Comparison
from ensemble.errors import NoModelError, UsageError
from ensemble.report.rows import Entry, ensemble_entries, trial_entries
from ensemble.report.stats import McNemarTest, mcnemar, mcnemar_words, score

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.report.final_members import FinalMember

CSV_COLUMNS = (
    "rank", "model", "kind", "family", "holdout_accuracy", "ci95_low", "ci95_high", "holdout_correct",
    "holdout_logloss", "ece", "val_accuracy", "fit_seconds", "predict_ms_per_1000", "params", "size_bytes", "n_train",
    "device",
)  # fmt: skip


def _cost_key(e: Entry) -> tuple[float, float]:
    inf = float("inf")
    return (e.predict_ms if e.predict_ms is not None else inf, e.fit_seconds if e.fit_seconds is not None else inf)


def rank(entries: list[Entry]) -> list[Entry]:
    """Best holdout accuracy first; equal correct counts go to the cheaper model."""
    return sorted(entries, key=lambda e: (-e.scored.holdout_correct, *_cost_key(e), e.name))


@dataclass(frozen=True)
class Gain:
    """One step of what ensembling, TTA and the weights added: its scores and its gain over the step before."""

    key: Comparison
    step: str
    val_accuracy: float | None
    holdout_accuracy: float
    holdout_logloss: float
    gain: float | None  # holdout accuracy over the previous step's; None for the first

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def tta_and_ensembling(manifest: Manifest | None) -> list[Gain]:
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
    out: list[Gain] = []
    prev = None
    for key, what in steps:
        r = metrics.get(key)
        if r is None or (out and key == out[-1].key):
            continue
        h = r.holdout
        step = what + (f" ({r.member})" if r.member else "")
        val = r.val.accuracy if r.val else None
        out.append(Gain(key, step, val, h.accuracy, h.logloss, None if prev is None else h.accuracy - prev))
        prev = h.accuracy
    return out


@dataclass(frozen=True)
class McNemar:
    """The McNemar test of the best ensemble row (``a``) against the best single model (``b``), and in words."""

    test: McNemarTest
    a: str
    b: str
    words: str

    def to_json(self) -> dict[str, object]:
        """As summary.json's ``mcnemar``: the test's counts and p-value, the two names, the words."""
        return {**asdict(self.test), "a": self.a, "b": self.b, "words": self.words}


class LeaderboardRow(TypedDict):
    """One row of leaderboard.csv and of summary.json's ``leaderboard``, as written (rounded)."""

    rank: int
    model: str
    kind: str
    family: str
    holdout_accuracy: float
    ci95_low: float
    ci95_high: float
    holdout_correct: int
    holdout_logloss: float
    ece: float
    val_accuracy: float | None
    fit_seconds: float | None
    predict_ms_per_1000: float | None
    params: int | None
    size_bytes: int | None
    n_train: int | None
    device: str | None


@dataclass
class ReportResult:
    """What the report found: every model ranked on the holdout, and (once made) what was written."""

    entries: list[Entry]  # ranked, best first
    manifest: Manifest | None  # the built ensemble's, if any
    y: np.ndarray  # holdout labels
    gains: list[Gain]  # what each ensembling step added on the holdout
    mcnemar: McNemar | None = None
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


def significance(result: ReportResult) -> McNemar | None:
    """McNemar between the best ensemble row and the best single model."""
    ranked = result.entries
    ens = [e for e in ranked if e.kind == "ensemble"]
    single = [e for e in ranked if e.kind != "ensemble"]
    if not ens or not single:
        return None
    y = result.y
    a, b = ens[0], single[0]
    t = mcnemar(y, a.holdout().argmax(1), b.holdout().argmax(1))
    return McNemar(t, a.name, b.name, mcnemar_words(t, a.name, b.name))


def leaderboard_rows(entries: list[Entry]) -> list[LeaderboardRow]:
    """Rows of leaderboard.csv (rounded)."""
    out: list[LeaderboardRow] = []
    for i, e in enumerate(entries, start=1):
        m = e.scored
        out.append(
            {
                "rank": i,
                "model": e.name,
                "kind": e.kind,
                "family": e.family,
                "holdout_accuracy": round(m.holdout_accuracy, 6),
                "ci95_low": round(m.ci95_low, 6),
                "ci95_high": round(m.ci95_high, 6),
                "holdout_correct": m.holdout_correct,
                "holdout_logloss": round(m.holdout_logloss, 6) + 0.0,
                "ece": round(m.ece, 6),
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
