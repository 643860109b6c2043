"""``ensemble build``: top-k CNN trials -> TTA views -> soft-voting weights -> ``runs/NAME/ensemble/``.

Selection (members, views, weights) uses validation probabilities only; the holdout is
predicted for reporting and never trains or selects anything. With ``refit`` each kept CNN is
retrained on train + validation with its own config for its best epoch count; its validation
probabilities then come from the pre-refit model (the refit one has seen those rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.combine.candidates import Candidate, find_candidates
from ensemble.combine.folder import write_folder
from ensemble.combine.manifest import Manifest
from ensemble.combine.members import load_keras_model, member_probas, prediction_copy, progress_bar
from ensemble.combine.records import (
    Comparison,
    ComparisonResult,
    GreedyStep,
    Metrics,
    Score,
    TrainValRefit,
    Tta,
    Weights,
)
from ensemble.combine.tta import CANDIDATES, IDENTITY, MIN_GAIN_SE, parse_views, select_views
from ensemble.combine.voting import SoftVoter, soft_vote
from ensemble.errors import ArtifactError, UsageError
from ensemble.io import read_json
from ensemble.metrics import accuracy, log_loss
from ensemble.search.artifacts import load_proba
from ensemble.search.cnn.config import CnnConfig
from ensemble.search.cnn.model import fit_model

if TYPE_CHECKING:
    import keras

    from ensemble.data.runs import Run


def _tta_plan(tta: str) -> tuple[str, list[str]]:
    """(mode, views to predict): auto tries every candidate; identity is always predicted, for the gain."""
    t = tta.strip().lower()
    if t == "auto":
        return "auto", list(CANDIDATES)
    if t == "none":
        return "none", [IDENTITY]
    return "list", parse_views(tta)


def _metrics(y: np.ndarray, p: np.ndarray) -> Score:
    return Score(round(accuracy(y, p), 6), round(log_loss(y, p), 6))


def refit_member(config: CnnConfig, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> keras.Model:
    """Retrain a CNN on ``x, y`` with its own config for ``epochs`` epochs (training seed ``seed``)."""
    model, _ = fit_model(config.replace(epochs=epochs), x, y, seed=seed)
    return model


def _compared(
    y_val: np.ndarray, y_hold: np.ndarray, val: np.ndarray, hold: np.ndarray, member: str | None = None
) -> ComparisonResult:
    """One entry of the manifest's ``metrics``: validation and holdout scores of some probabilities."""
    return ComparisonResult(_metrics(y_hold, hold), _metrics(y_val, val), member)


def _weights_record(weights: str, seed: int, n_iter: int, vote: _Vote, metric: str) -> Weights:
    """How the weights were chosen; for greedy its trajectory: member picked, val log loss and accuracy per round."""
    if weights != "greedy":
        return Weights(weights, seed, n_iter)
    g = vote.voter.greedy_
    steps = tuple(
        GreedyStep(vote.members[m].name, round(lo, 6), round(a, 6)) for m, lo, a in zip(g.picks, g.losses, g.accuracies)
    )
    return Weights(weights, seed, n_iter, metric, g.best_iter, steps)


def build_ensemble(run: Run, **kwargs: Any) -> Manifest:
    """Build ``runs/NAME/ensemble/`` (see :func:`_build`) holding the run's writer lock; return its manifest."""
    from ensemble.data.runs import runs_dir, sweep_debris
    from ensemble.locks import run_lock

    with run_lock(runs_dir(), run.name):
        sweep_debris(run.root, say=kwargs.get("say", print))
        return _build(run, **kwargs)


def _build(
    run: Run,
    *,
    top_k: int = 5,
    weights: str = "greedy",
    tta: str = "auto",
    include_baselines: bool = False,
    refit: bool = False,
    seed: int = 0,
    n_iter: int = 50,
    greedy_metric: str = "accuracy",
    batch_size: int = 128,
    storage_url: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Manifest:
    """Build ``runs/NAME/ensemble/`` and return its manifest: candidates -> views -> weights -> folder."""
    from ensemble.search.storage import open_storage

    if weights not in ("equal", "greedy"):
        raise UsageError(f"--weights must be equal or greedy, got '{weights}'")
    mode, views_all = _tta_plan(tta)
    cnns, baselines = find_candidates(run, open_storage(run, storage_url), top_k, include_baselines, say)
    extra = f" + baselines {', '.join(b.name for b in baselines)}" if baselines else ""
    say(f"members: top-{top_k} CNN trials {', '.join(c.name for c in cnns)}{extra}")
    pred = _predict_candidates(run, cnns, views_all, batch_size=batch_size, progress=progress, say=say)
    y_val, y_hold = run.part("val")[1], run.part("holdout")[1]
    views, steps = _choose_views(pred, y_val, mode, views_all)
    vote = _vote(pred, baselines, views, y_val, y_hold, weights=weights, n_iter=n_iter, seed=seed, metric=greedy_metric)
    say(f"weights ({weights}): " + ", ".join(f"{vote.members[i].name}={vote.weights[i]:.3f}" for i in vote.keep))
    say(f"TTA ({mode}): {','.join(views)}")
    kept_models, refit_info = _kept_models(run, pred, vote, refit=refit, seed=seed, say=say)
    fast = [prediction_copy(m, vote.members[i].name) for m, i in zip(kept_models, vote.kept_cnn)]
    final_hold = vote.final_hold
    if refit:
        final_hold = _ensemble_proba(fast, vote, views, run.part("holdout")[0], "holdout", batch_size, progress)
        vote.comparison[Comparison.final_refit(weights)] = ComparisonResult(_metrics(y_hold, final_hold))
    label = f"test {len(kept_models)} models x {len(views)} views"
    proba_test = _ensemble_proba(fast, vote, views, run.x_test, "test", batch_size, progress, label=label)
    gain = {"identity": _metrics(y_val, pred.equal_val[IDENTITY]), "tta": _metrics(y_val, pred.tta(views)[0].mean(0))}
    min_gain = MIN_GAIN_SE if mode == "auto" else None
    tta_record = Tta(tuple(views), mode, min_gain, tuple(pred.views), steps, gain)
    return write_folder(
        run,
        vote.cnn_members(kept_models, refit_info),
        vote.baseline_members(),
        probas={"val": vote.final_val, "holdout": final_hold, "test": proba_test},
        weights=_weights_record(weights, seed, n_iter, vote, greedy_metric),
        tta=tta_record,
        metrics=vote.comparison,
        refit=refit,
    )


@dataclass
class _Predicted:
    """The CNN candidates' probabilities on validation and holdout, per predicted view: (M, V, N, 10)."""

    cnns: list[Candidate]
    originals: list[keras.Model]  # the Keras models as saved
    views: list[str]  # identity first
    val: np.ndarray
    holdout: np.ndarray

    @property
    def equal_val(self) -> dict[str, np.ndarray]:
        """The equal-weight CNN ensemble's validation probabilities per view."""
        return {v: self.val[:, i].mean(axis=0) for i, v in enumerate(self.views)}

    def tta(self, views: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-member TTA probabilities (M, N, 10) on validation and holdout, averaged over ``views``."""
        sel = [self.views.index(v) for v in views]
        return self.val[:, sel].mean(axis=1), self.holdout[:, sel].mean(axis=1)


def _predict_candidates(
    run: Run,
    cnns: list[Candidate],
    views_all: list[str],
    *,
    batch_size: int,
    progress: bool,
    say: Callable[[str], None],
) -> _Predicted:
    predicted = [IDENTITY] + [v for v in views_all if v != IDENTITY]
    originals = [load_keras_model(c.folder / "model.keras", c.name) for c in cnns]
    models = [prediction_copy(m, c.name) for m, c in zip(originals, cnns)]  # BatchNorm folded: same outputs, faster
    x_val, x_hold = run.part("val")[0], run.part("holdout")[0]
    names = [c.name for c in cnns]
    label = f"validate {len(models)} models x {len(predicted)} views"
    with progress_bar(len(x_val) + len(x_hold), label, progress) as adv:
        pv = member_probas(models, x_val, predicted, batch_size=batch_size, advance=adv, names=names)
        ph = member_probas(models, x_hold, predicted, batch_size=batch_size, advance=adv, names=names)
    for c, p in zip(cnns, pv):
        diff = float(np.abs(p[0] - load_proba(c.folder, "val")).max())
        if diff > 1e-3:
            say(f"WARNING: {c.name}: model.keras differs from its saved proba_val.npy by up to {diff:.3g}")
    return _Predicted(cnns, originals, predicted, pv, ph)


def _choose_views(pred: _Predicted, y_val: np.ndarray, mode: str, views_all: list[str]) -> tuple[list[str], list]:
    """TTA views, chosen on the equal-weight CNN ensemble's validation probabilities."""
    if mode == "auto":
        return select_views(pred.equal_val, y_val)
    return (views_all, []) if mode == "list" else ([IDENTITY], [])


@dataclass
class _Vote:
    """Soft-voting weights over the CNN candidates (with TTA) and the baselines' saved probabilities."""

    members: list[Candidate]
    n_cnn: int
    voter: SoftVoter
    weights: np.ndarray
    final_val: np.ndarray
    final_hold: np.ndarray
    comparison: Metrics

    @property
    def keep(self) -> list[int]:
        return [i for i in range(len(self.members)) if self.weights[i] > 0]

    @property
    def kept_cnn(self) -> list[int]:
        return [i for i in self.keep if i < self.n_cnn]

    @property
    def kept_baselines(self) -> list[int]:
        return [i for i in self.keep if i >= self.n_cnn]

    def cnn_members(
        self, models: list[keras.Model], refit_info: dict[str, TrainValRefit]
    ) -> list[tuple[Candidate, float, keras.Model, TrainValRefit | None]]:
        """(candidate, weight, Keras model, refit record) of each kept CNN, ``models`` in ``kept_cnn`` order."""
        out = []
        for i, model in zip(self.kept_cnn, models):
            c = self.members[i]
            out.append((c, float(self.weights[i]), model, refit_info.get(c.name)))
        return out

    def baseline_members(self) -> list[tuple[Candidate, float]]:
        """(candidate, weight) of each kept baseline."""
        return [(self.members[i], float(self.weights[i])) for i in self.kept_baselines]


def _vote(
    pred: _Predicted,
    baselines: list[Candidate],
    views: list[str],
    y_val: np.ndarray,
    y_hold: np.ndarray,
    *,
    weights: str,
    n_iter: int,
    seed: int,
    metric: str,
) -> _Vote:
    tta_val, tta_hold = pred.tta(views)
    val_all = list(tta_val) + [load_proba(b.folder, "val") for b in baselines]
    hold_all = list(tta_hold) + [load_proba(b.folder, "holdout") for b in baselines]
    voter = SoftVoter(weights=weights, n_iter=n_iter, seed=seed, metric=metric).fit(val_all, y_val)
    final_val, final_hold = voter.predict_proba(val_all), voter.predict_proba(hold_all)
    pv, ph = pred.val, pred.holdout
    comparison = {
        Comparison.BEST_SINGLE: _compared(y_val, y_hold, pv[0, 0], ph[0, 0], member=pred.cnns[0].name),
        Comparison.TOP_K_EQUAL: _compared(y_val, y_hold, pv[:, 0].mean(0), ph[:, 0].mean(0)),
        Comparison.TOP_K_EQUAL_TTA: _compared(y_val, y_hold, tta_val.mean(0), tta_hold.mean(0)),
        Comparison.final(weights): _compared(y_val, y_hold, final_val, final_hold),
    }
    members = pred.cnns + baselines
    return _Vote(members, len(pred.cnns), voter, voter.weights_, final_val, final_hold, comparison)


def _kept_models(
    run: Run, pred: _Predicted, vote: _Vote, *, refit: bool, seed: int, say: Callable[[str], None]
) -> tuple[list[keras.Model], dict[str, TrainValRefit]]:
    """The kept CNNs' models: as trained, or (``refit``) retrained on train + validation for their best epoch count."""
    if not refit:
        return [pred.originals[i] for i in vote.kept_cnn], {}
    (x_tr, y_tr), (x_val, y_val) = run.part("train"), run.part("val")
    x_tv, y_tv = np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val])
    models, info = [], {}
    for i in vote.kept_cnn:
        c = pred.cnns[i]
        epochs = max(1, int(c.attrs.get("best_epoch") or c.attrs.get("epochs_run") or 1))
        say(f"refit {c.name}: {len(x_tv):,} train+val images, {epochs} epochs")
        path = c.folder / "config.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; --refit needs each member's config")
        config = CnnConfig.from_json(read_json(path), where=str(path), extra="ignore")  # it also holds best_epoch
        models.append(refit_member(config, x_tv, y_tv, epochs, seed))
        info[c.name] = TrainValRefit(epochs, len(x_tv))
    return models, info


def _ensemble_proba(
    fast: list[keras.Model],
    vote: _Vote,
    views: list[str],
    x: np.ndarray,
    part: str,
    batch_size: int,
    progress: bool,
    *,
    label: str = "",
) -> np.ndarray:
    """The weighted ensemble's probabilities on ``x``: kept CNNs predicted with TTA, baselines from their files."""
    parts: list[np.ndarray] = []
    if fast:
        with progress_bar(len(x), label or f"{part} (refit)", progress) as adv:
            names = [vote.members[i].name for i in vote.kept_cnn]
            parts += list(member_probas(fast, x, views, batch_size=batch_size, advance=adv, names=names).mean(axis=1))
    parts += [load_proba(vote.members[i].folder, part) for i in vote.kept_baselines]
    weights = [float(vote.weights[i]) for i in vote.kept_cnn + vote.kept_baselines]
    return soft_vote(parts, weights).astype(np.float32)
