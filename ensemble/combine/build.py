"""``ensemble build``: top-k CNN trials -> TTA views -> soft-voting weights -> ``runs/NAME/ensemble/``.

Selection (members, views, weights) uses validation probabilities only; the holdout is
predicted for reporting and never trains or selects anything. With ``refit`` each kept CNN is
retrained on train + validation with its own config for its best epoch count; its validation
probabilities then come from the pre-refit model (the refit one has seen those rows).
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble import __version__
from ensemble.combine.manifest import FORMAT, INPUT_SPEC, MANIFEST, images_fingerprint
from ensemble.combine.members import load_keras_model, member_probas, progress_bar, save_npy
from ensemble.combine.tta import CANDIDATES, IDENTITY, MIN_GAIN_SE, parse_views, select_views
from ensemble.combine.voting import SoftVoter, accuracy, log_loss
from ensemble.errors import ArtifactError, DataError, UsageError
from ensemble.io import fsync_tree, read_json, swap_dir, write_json
from ensemble.search.artifacts import load_proba, sha256_file
from ensemble.search.cnn.simplify import inference_model, model_cost

if TYPE_CHECKING:
    from ensemble.data.runs import Run

CNN_STUDY = "cnn"
BASELINE_PREFIX = "baseline-"
#: Files of a saved baseline model (ensemble.search.baselines.models.save_model), copied so predict can run it.
BASELINE_MODEL_FILES = ("model.joblib", "model.ubj", "preprocess.joblib")


@dataclass
class Candidate:
    """A completed trial that may join the ensemble."""

    name: str
    kind: str  # "cnn" or "baseline"
    study: str
    number: int
    folder: Path
    val_accuracy: float
    val_logloss: float
    attrs: dict[str, Any]


def _candidates(storage: Any, study_name: str, kind: str) -> list[Candidate]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if not {"val_accuracy", "val_logloss", "artifact_dir"} <= set(a):
            continue
        label = CNN_STUDY if kind == "cnn" else study_name
        name = f"{label}-trial-{t.number:04d}"
        out.append(
            Candidate(name, kind, study_name, t.number, Path(a["artifact_dir"]), a["val_accuracy"], a["val_logloss"], a)
        )
    return sorted(out, key=lambda c: (-c.val_accuracy, c.val_logloss, c.number))


def find_candidates(run: Run, storage: Any, top_k: int, include_baselines: bool) -> tuple[list, list]:
    """Top-k CNN trials by validation accuracy (log loss breaks ties), and the best trial per baseline study."""
    import optuna

    if top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}")
    names = optuna.get_all_study_names(storage=storage)
    if CNN_STUDY not in names:
        raise UsageError(f"run '{run.name}' has no '{CNN_STUDY}' study; run the CNN search first")
    cnns = _candidates(storage, CNN_STUDY, "cnn")[:top_k]
    if not cnns:
        raise UsageError(f"run '{run.name}': the '{CNN_STUDY}' study has no completed trial with saved artifacts")
    baselines = []
    if include_baselines:
        for s in sorted(n for n in names if n.startswith(BASELINE_PREFIX)):
            baselines += _candidates(storage, s, "baseline")[:1]
    for c in cnns + baselines:
        check_trial(run, c)
    return cnns, baselines


def check_trial(run: Run, c: Candidate) -> None:
    """A trial's files exist and were made from this run's data and split."""
    fp = c.attrs.get("data_fingerprint")
    if fp and fp != run.meta["data"]["fingerprint"]:
        raise DataError(
            f"{c.folder}: trial {c.name} was trained on data {str(fp)[:16]}, "
            f"but run '{run.name}' has data fingerprint {str(run.meta['data']['fingerprint'])[:16]}"
        )
    if c.kind == "cnn" and not (c.folder / "model.keras").is_file():
        raise ArtifactError(f"{c.folder / 'model.keras'}: missing model of trial {c.name}")
    for part, n in (("val", len(run.split.val)), ("holdout", len(run.split.holdout)), ("test", len(run.x_test))):
        p = load_proba(c.folder, part)
        if p.shape != (n, 10):
            raise DataError(
                f"{c.folder / f'proba_{part}.npy'}: shape {p.shape}, but run '{run.name}' has {n} {part} rows: "
                "the trial was made from other data or another split"
            )


def _tta_plan(tta: str) -> tuple[str, list[str]]:
    """(mode, views to predict): auto tries every candidate; identity is always predicted, for the gain."""
    t = tta.strip().lower()
    if t == "auto":
        return "auto", list(CANDIDATES)
    if t == "none":
        return "none", [IDENTITY]
    return "list", parse_views(tta)


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"accuracy": round(accuracy(y, p), 6), "logloss": round(log_loss(y, p), 6)}


def _versions() -> dict[str, str]:
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


def refit_member(config: dict[str, Any], x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> Any:
    """Retrain a CNN on ``x, y`` with its own config (``ensemble.search.cnn.model.fit_model``)."""
    import inspect

    import keras

    try:
        from ensemble.search.cnn import model as cnn
    except ImportError as exc:
        raise UsageError(f"--refit needs ensemble.search.cnn.model.fit_model (the CNN search): {exc}") from exc
    known = getattr(cnn, "DEFAULTS", None)
    config = {k: v for k, v in config.items() if known is None or k in known}  # drop e.g. best_epoch
    keras.utils.set_random_seed(seed)
    extra = {"seed": seed} if "seed" in inspect.signature(cnn.fit_model).parameters else {}
    out = cnn.fit_model(config, x, y, epochs=epochs, **extra)
    return out[0] if isinstance(out, tuple) else out  # fit_model returns (model, info)


def _greedy_record(g: Any, members: list[Candidate], metric: str) -> dict[str, Any]:
    """The greedy trajectory for the manifest: member picked, val log loss and accuracy per iteration."""
    return {
        "metric": metric,
        "best_iter": g.best_iter,
        "trajectory": [
            {"pick": members[m].name, "val_logloss": round(lo, 6), "val_accuracy": round(a, 6)}
            for m, lo, a in zip(g.picks, g.losses, g.accuracies)
        ],
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every file in ``folder`` (by relative path) and write ``manifest.json``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest["artifacts"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def build_ensemble(run: Run, **kwargs: Any) -> dict[str, Any]:
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
) -> dict[str, Any]:
    """Build ``runs/NAME/ensemble/`` and return its manifest."""
    import keras

    from ensemble.search.storage import open_storage

    if weights not in ("equal", "greedy"):
        raise UsageError(f"--weights must be equal or greedy, got '{weights}'")
    t0 = time.perf_counter()
    mode, views_all = _tta_plan(tta)
    predicted = [IDENTITY] + [v for v in views_all if v != IDENTITY]
    cnns, baselines = find_candidates(run, open_storage(run, storage_url), top_k, include_baselines)
    extra = f" + baselines {', '.join(b.name for b in baselines)}" if baselines else ""
    say(f"members: top-{top_k} CNN trials {', '.join(c.name for c in cnns)}{extra}")
    originals = [load_keras_model(c.folder / "model.keras", c.name) for c in cnns]
    models = [inference_model(m) for m in originals]  # BatchNorm folded: same outputs, faster
    (x_val, y_val), (x_hold, y_hold) = run.part("val"), run.part("holdout")
    n_ev = len(x_val) + len(x_hold)
    with progress_bar(n_ev, f"validate {len(models)} models x {len(predicted)} views", progress) as adv:
        pv = member_probas(models, x_val, predicted, batch_size=batch_size, advance=adv, names=[c.name for c in cnns])
        ph = member_probas(models, x_hold, predicted, batch_size=batch_size, advance=adv, names=[c.name for c in cnns])
    for c, p in zip(cnns, pv):
        diff = float(np.abs(p[0] - load_proba(c.folder, "val")).max())
        if diff > 1e-3:
            say(f"WARNING: {c.name}: model.keras differs from its saved proba_val.npy by up to {diff:.3g}")

    # TTA views, chosen on the equal-weight CNN ensemble's validation probabilities.
    vidx = {v: i for i, v in enumerate(predicted)}
    eq_val = {v: pv[:, i].mean(axis=0) for v, i in vidx.items()}
    if mode == "auto":
        views, steps = select_views(eq_val, y_val)
    else:
        views, steps = (views_all, []) if mode == "list" else ([IDENTITY], [])
    sel = [vidx[v] for v in views]
    tta_val = pv[:, sel].mean(axis=1)  # (M, N, 10) per-member TTA probabilities
    tta_hold = ph[:, sel].mean(axis=1)

    # Weights over CNN members (+ baselines' saved probabilities).
    members = cnns + baselines
    val_all = list(tta_val) + [load_proba(b.folder, "val") for b in baselines]
    hold_all = list(tta_hold) + [load_proba(b.folder, "holdout") for b in baselines]
    voter = SoftVoter(weights=weights, n_iter=n_iter, seed=seed, metric=greedy_metric).fit(val_all, y_val)
    w = voter.weights_
    final_val, final_hold = voter.predict_proba(val_all), voter.predict_proba(hold_all)
    comparison = {
        "best_single": {
            "member": cnns[0].name,
            "val": _metrics(y_val, pv[0, 0]),
            "holdout": _metrics(y_hold, ph[0, 0]),
        },
        "top_k_equal": {"val": _metrics(y_val, pv[:, 0].mean(0)), "holdout": _metrics(y_hold, ph[:, 0].mean(0))},
        "top_k_equal_tta": {"val": _metrics(y_val, tta_val.mean(0)), "holdout": _metrics(y_hold, tta_hold.mean(0))},
        f"top_k_{weights}_tta": {"val": _metrics(y_val, final_val), "holdout": _metrics(y_hold, final_hold)},
    }
    keep = [i for i in range(len(members)) if w[i] > 0]
    say(f"weights ({weights}): " + ", ".join(f"{members[i].name}={w[i]:.3f}" for i in keep))
    say(f"TTA ({mode}): {','.join(views)}")

    kept_models = [originals[i] for i in keep if i < len(cnns)]
    refit_info: dict[str, Any] = {}
    if refit:
        (x_tr, y_tr) = run.part("train")
        x_tv, y_tv = np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val])
        kept_models = []
        for i in [i for i in keep if i < len(cnns)]:
            c = cnns[i]
            epochs = int(c.attrs.get("best_epoch") or c.attrs.get("epochs_run") or 1)
            say(f"refit {c.name}: {len(x_tv):,} train+val images, {epochs} epochs")
            if not (c.folder / "config.json").is_file():
                raise ArtifactError(f"{c.folder / 'config.json'}: missing; --refit needs each member's config")
            kept_models.append(refit_member(read_json(c.folder / "config.json"), x_tv, y_tv, max(1, epochs), seed))
            refit_info[c.name] = {"epochs": max(1, epochs), "rows": len(x_tv)}
    kept_cnn = [i for i in keep if i < len(cnns)]
    kept_base = [i for i in keep if i >= len(cnns)]
    wk = {i: float(w[i]) for i in keep}

    def ensemble_proba(x: np.ndarray, label: str, part: str) -> np.ndarray:
        total = np.zeros((len(x), 10))
        if kept_models:
            with progress_bar(len(x), label, progress) as adv:
                p = member_probas(fast_models, x, views, batch_size=batch_size, advance=adv)
            total += np.tensordot([wk[i] for i in kept_cnn], p.mean(axis=1), axes=1)
        for i in kept_base:
            total += wk[i] * load_proba(members[i].folder, part)
        return (total / sum(wk.values())).astype(np.float32)

    fast_models = [inference_model(m) for m in kept_models]
    if refit:
        final_hold = ensemble_proba(x_hold, "holdout (refit)", "holdout")
        comparison[f"top_k_{weights}_tta_refit"] = {"holdout": _metrics(y_hold, final_hold)}
    proba_test = ensemble_proba(run.x_test, f"test {len(kept_models)} models x {len(views)} views", "test")

    # Write the folder next to the final one, then swap it in.
    final = run.path("ensemble")
    tmp = run.path(f".ensemble-tmp-{time.time_ns()}")
    (tmp / "members").mkdir(parents=True)
    entries = []
    try:
        for j, i in enumerate(kept_cnn):
            c = cnns[i]
            rel = f"members/{c.name}.keras"
            if refit:
                kept_models[j].save(tmp / rel)
            else:
                shutil.copy2(c.folder / "model.keras", tmp / rel)
            has_config = (c.folder / "config.json").is_file()
            if has_config:
                shutil.copy2(c.folder / "config.json", tmp / f"members/{c.name}.config.json")
            entries.append(
                {
                    "name": c.name,
                    "kind": "cnn",
                    "weight": wk[i],
                    "file": rel,
                    "config": f"members/{c.name}.config.json" if has_config else None,
                    "study": c.study,
                    "trial": c.number,
                    "val_accuracy": c.val_accuracy,
                    "val_logloss": c.val_logloss,
                    "refit": refit_info.get(c.name),
                    **model_cost(kept_models[j]),
                }
            )
        for i in kept_base:
            b = members[i]
            (tmp / "members" / b.name).mkdir()
            probas = {}
            for part in ("val", "holdout", "test"):
                probas[part] = f"members/{b.name}/proba_{part}.npy"
                shutil.copy2(b.folder / f"proba_{part}.npy", tmp / probas[part])
            model_files = [f.name for f in b.folder.iterdir() if f.is_file() and f.name in BASELINE_MODEL_FILES]
            for f in model_files + ["config.json"] * (b.folder / "config.json").is_file():
                shutil.copy2(b.folder / f, tmp / "members" / b.name / f)
            entry = {"name": b.name, "kind": "baseline", "weight": wk[i], "probas": probas, "study": b.study}
            if model_files:
                entry["model_dir"] = f"members/{b.name}"
            entries.append({**entry, "trial": b.number, "val_accuracy": b.val_accuracy, "val_logloss": b.val_logloss})
        for part, p in (("val", final_val), ("holdout", final_hold), ("test", proba_test)):
            save_npy(tmp / f"proba_{part}.npy", np.asarray(p, np.float32))
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run": run.name,
            "members": entries,
            "weights": {
                "mode": weights,
                "seed": seed,
                "n_iter": n_iter,
                **(_greedy_record(voter.greedy_, members, greedy_metric) if weights == "greedy" else {}),
            },
            "tta": {
                "mode": mode,
                **({"min_gain_se": MIN_GAIN_SE} if mode == "auto" else {}),
                "views": views,
                "candidates": predicted,
                "steps": steps,
                "gain_val": {"identity": _metrics(y_val, eq_val[IDENTITY]), "tta": _metrics(y_val, tta_val.mean(0))},
            },
            "preprocessing": {"input": INPUT_SPEC, "views": "applied to raw pixels before each model"},
            "keras": {"backend": keras.backend.backend(), "version": keras.version()},
            "versions": _versions(),
            "data": {
                "fingerprint": run.meta["data"]["fingerprint"],
                "test_fingerprint": images_fingerprint(run.x_test),
                "n_test": len(run.x_test),
                "split": {k: len(getattr(run.split, k)) for k in ("train", "val", "holdout")},
            },
            "selection": "members, views and weights chosen on validation; holdout only reported",
            "metrics": comparison,
            "artifacts": {},
        }
        write_manifest(tmp, manifest)
        fsync_tree(tmp)
        swap_dir(tmp, final, old=run.path(f".ensemble-old-{time.time_ns()}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    return manifest
