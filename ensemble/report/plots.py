"""Figures of the report, each returned as PNG bytes (matplotlib, imported lazily).

Each is drawn on its own ``Figure`` and saved with the Agg renderer, never through pyplot: pyplot's
backend and figures are the user's (a notebook's inline plots keep working after a run).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ensemble.report.summary import LeaderboardRow

DPI = 100


def _subplots(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True
) -> tuple[Figure, Axes | np.ndarray]:
    """``pyplot.subplots`` on a new ``Figure`` of its own: no pyplot state, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def leaderboard_chart(rows: list[LeaderboardRow]) -> bytes:
    """Holdout accuracy with its 95% interval, one bar per model."""
    rows = rows[::-1]
    colors = {"ensemble": "#2b8a3e", "cnn": "#1c7ed6", "baseline": "#868e96"}
    fig, ax = _subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    acc = np.array([r["holdout_accuracy"] for r in rows])
    err = np.array([[a - r["ci95_low"], r["ci95_high"] - a] for a, r in zip(acc, rows)]).T
    ax.barh(range(len(rows)), acc, xerr=err, color=[colors.get(r["kind"], "#868e96") for r in rows], capsize=3)
    ax.set_yticks(range(len(rows)), [r["model"] for r in rows], fontsize=8)
    lo = max(0.0, float((acc - err[0]).min()) - 0.01)
    ax.set_xlim(lo, 1.0)
    ax.set_xlabel("holdout accuracy (bars: 95% Wilson interval)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def confusion_matrix_png(y: np.ndarray, pred: np.ndarray, title: str) -> bytes:
    """10x10 counts, rows = true digit, columns = predicted digit."""
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (y, pred), 1)
    fig, ax = _subplots(figsize=(5.6, 5))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    ax.imshow(off, cmap="Reds", vmin=0, vmax=max(1, off.max()))
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                dark = i != j and off[i, j] > 0.55 * off.max()
                color = "#1864ab" if i == j else ("white" if dark else "black")
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def gallery_png(images: np.ndarray, y: np.ndarray, proba: np.ndarray, limit: int) -> tuple[bytes | None, int]:
    """Misclassified digits, most confident mistakes first: 'true 4 -> 9 (0.87)' under each."""
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    if len(wrong) == 0 or limit < 1:  # nothing wrong, or --gallery 0
        return None, 0
    wrong = wrong[np.argsort(-proba[wrong, pred[wrong]], kind="stable")][:limit]
    cols = 10
    rows = int(np.ceil(len(wrong) / cols))
    fig, axes = _subplots(rows, cols, figsize=(cols * 1.05, rows * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(images[i].reshape(28, 28), cmap="gray_r")
        ax.set_title(f"true {y[i]} → {pred[i]}\n{proba[i, pred[i]]:.2f}", fontsize=7)
    return _png(fig), len(wrong)


def _zoom(ax: Axes, values: list[float], best: float) -> str:
    """Zoom the y axis on the good trials (within 0.08 of the best); returns a note on what is cut off."""
    low = max(min(values), best - 0.08)
    ax.set_ylim(max(0.0, low - 0.005), min(1.0005, best + 0.005))
    hidden = sum(v < low for v in values)
    return f" ({hidden} point(s) below {low:.2f} not shown)" if hidden else ""


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    ok = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in ok]


def history_png(study: optuna.Study) -> bytes | None:
    """Optimization history: validation accuracy per trial and the best so far."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    fig, ax = _subplots(figsize=(7, 3.4))
    xs, ys = [t.number for t in done], [t.value for t in done]
    ax.scatter(xs, ys, s=18, label="completed trial", color="#1c7ed6")
    pruned = [t for t in _finished(study) if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, s=14, marker="x", color="#adb5bd", label="pruned (last epoch)")
    ax.step(xs, np.maximum.accumulate(ys), where="post", color="#e8590c", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    vals = ys + ([t.intermediate_values[max(t.intermediate_values)] for t in pruned] if pruned else [])
    note = _zoom(ax, vals, max(ys))
    ax.set_title(f"optimization history: study '{study.study_name}'{note}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def importance_png(study: optuna.Study) -> tuple[bytes | None, str]:
    """Parameter importances (Optuna's default fANOVA evaluator); needs >= 2 completed trials."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return None, f"parameter importances need at least 2 completed trials (study has {len(done)})"
    try:
        with warnings.catch_warnings():  # "quantiles select the same set of trials": few trials, said below
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return None, f"parameter importances unavailable: {exc}"
    if not imp:
        return None, "parameter importances unavailable: no parameter varied"
    zero = [k for k, v in imp.items() if v < 0.005]
    imp = {k: v for k, v in imp.items() if v >= 0.005}
    names, vals = list(imp)[::-1], list(imp.values())[::-1]
    fig, ax = _subplots(figsize=(7, 0.3 * len(names) + 1))
    ax.barh(names, vals, color="#1c7ed6")
    below = f"\nbelow 0.005 (not shown): {', '.join(zero)}" if zero else ""
    ax.set_xlabel(f"importance for validation accuracy (fANOVA, sums to 1){below}", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(f"parameter importances: study '{study.study_name}' ({len(done)} completed trials)", fontsize=9)
    return _png(fig), ""


def learning_curves_png(study: optuna.Study) -> bytes | None:
    """Per-epoch validation accuracy (intermediate values) of every trial; pruned trials dashed."""
    import optuna

    trials = [t for t in _finished(study) if t.intermediate_values]
    if not trials:
        return None
    fig, ax = _subplots(figsize=(7, 3.6))
    for t in trials:
        steps = sorted(t.intermediate_values)
        pruned = t.state == optuna.trial.TrialState.PRUNED
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            linestyle="--" if pruned else "-",
            alpha=0.5 if pruned else 0.9,
            marker="o",
            markersize=2.5,
            label=f"trial {t.number}" + (" (pruned)" if pruned else ""),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    vals = [v for t in trials for v in t.intermediate_values.values()]
    note = _zoom(ax, vals, max(vals))
    ax.set_title(f"learning curves: study '{study.study_name}'{note}", fontsize=9)
    ax.grid(alpha=0.3)
    if len(trials) <= 24:
        ax.legend(fontsize=7, ncol=1 + len(trials) // 12, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)
