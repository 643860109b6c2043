"""The invariants ``benchmarks/chaos.py`` checks on a run folder after the faults (see its docstring)."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from ensemble.combine.records import EnsembleRow

NEAR_TIE = 1e-4  # a recomputed label may differ from the stored one only where its top-2 margin is below this


def open_storage(root: Path, run_name: str, url: str | None) -> Any:
    """The run's Optuna storage: its journal file, or the database seen through the run's names."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        return optuna.storages.JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    from ensemble.search.scoped import scoped
    from ensemble.search.storage import connect

    return scoped(connect(url), run_name)


def _debris(root: Path) -> list[str]:
    found = [*root.rglob("*.partial"), *root.rglob("*.tmp"), *root.glob(".ensemble-tmp-*")]
    found += [*root.glob(".ensemble-old-*"), *root.glob(".ensemble-full-*"), *(root / ".cache").glob("*search-arrays*")]
    found += list((root / ".workers").glob("*.lock"))  # a dead process's token
    return sorted(str(p.relative_to(root)) for p in found)


def _trial_loads(trial: Any, study: str, sizes: dict[str, int]) -> str | None:
    import numpy as np

    from ensemble.combine.members import load_keras_model
    from ensemble.search.baselines.saved import load_model

    folder = Path(trial.user_attrs.get("artifact_dir", ""))
    try:
        if study == "cnn":
            load_keras_model(folder / "model.keras", folder.name)
        elif study != "baseline-fallback":
            load_model(folder, None)
        for part, n in sizes.items():
            p = np.load(folder / f"proba_{part}.npy")
            if p.shape != (n, 10) or not np.isfinite(p).all():
                return f"{folder}: proba_{part} shape {p.shape}"
    except Exception as exc:  # report any failure to load as a broken invariant
        return f"{folder}: {type(exc).__name__}: {exc}"[:300]
    return None


def check_invariants(root: Path, cnn_trials: int, storage: Any) -> dict[str, str]:
    """Each invariant's name -> "ok" or what broke it."""
    import optuna

    from ensemble.data.split import load_split
    from ensemble.inference.predict import load_ensemble
    from ensemble.report.submission import check_submission

    out: dict[str, str] = {}
    split = load_split(root / "split.json")
    n_test = int(json.loads((root / "ensemble" / "manifest.json").read_text())["data"]["n_test"])
    sizes = {"val": len(split.val), "holdout": len(split.holdout), "test": n_test}
    try:
        check_submission(root / "submission.csv", n_rows=n_test)
        out["valid submission"] = "ok"
    except Exception as exc:  # an invalid submission is a broken invariant
        out["valid submission"] = str(exc)
    running, broken, cnn = [], [], None
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        running += [f"{name}#{t.number}" for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            broken += [why for why in [_trial_loads(t, name, sizes)] if why]
        cnn = study if name == "cnn" else cnn
    out["no trial left RUNNING"] = "ok" if not running else f"RUNNING: {running}"
    out["every COMPLETE trial's artifacts load"] = "ok" if not broken else "; ".join(broken[:3])
    try:
        load_ensemble(root / "ensemble")
        if (root / "ensemble-full").exists():  # the final refit's ensemble, when the final model had CNNs
            load_ensemble(root / "ensemble-full")
        out["ensemble manifest verifies"] = "ok"
    except Exception as exc:  # a manifest that does not verify is a broken invariant
        out["ensemble manifest verifies"] = str(exc)
    debris = _debris(root)
    out["no temporary debris"] = "ok" if not debris else f"left: {debris[:6]}"
    out["CNN study has the trials asked for"] = _cnn_trials_verdict(cnn, cnn_trials)
    return out


def _cnn_trials_verdict(cnn: Any, asked: int) -> str:
    """The finished trials number ``asked``, and none of them is a trial a fault ended (a FAIL that counts
    without a failure of its own: no ``fail_reason``, e.g. a Ctrl-C'd one)."""
    import optuna

    from ensemble.search.cnn.study import finished_trials
    from ensemble.search.storage import was_killed

    if cnn is None:
        return "no CNN study"
    got = finished_trials(cnn)
    complete = len(cnn.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    retried = {n for t in cnn.trials for n in t.system_attrs.get("retry_history", ())}
    faulted = [t.number for t in cnn.get_trials(states=(optuna.trial.TrialState.FAIL,))
               if not was_killed(t) and t.number not in retried and not t.user_attrs.get("fail_reason")]  # fmt: skip
    if got == asked and complete >= 1 and not faulted:
        return "ok"
    return f"{got} finished ({complete} complete), asked {asked}" + (
        f"; counted although a fault ended them (FAIL with no failure of their own): {faulted}" if faulted else ""
    )


# ---------------------------------------------------------------- the submission is the final model's
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _trial_folder(storage: Any, name: str) -> Path:
    """``cnn-trial-0004`` / ``baseline-logreg-trial-0000`` -> that trial's artifact folder."""
    import optuna

    m = re.fullmatch(r"(.+)-trial-(\d+)", name)
    if m is None:
        raise ValueError(f"final model '{name}' is neither the ensemble nor a trial")
    study = optuna.load_study(study_name=m.group(1), storage=storage)
    return Path(study.trials[int(m.group(2))].user_attrs["artifact_dir"])


def _source_sha256(root: Path, final: str, storage: Any) -> str | None:
    """What a refit of ``final`` records as its source: the ensemble manifest's or the trial model's sha256."""
    if EnsembleRow.parse(final) is not None:
        path = root / "ensemble" / "manifest.json"
    elif final.startswith("cnn-trial-"):
        path = _trial_folder(storage, final) / "model.keras"
    else:
        return None
    return _sha256(path) if path.is_file() else None


def _predict(folder: Path, test_csv: Path, *, tta: bool) -> Any:
    """``ensemble predict`` of ``folder`` over the test CSV (sha256-verified load): its probabilities."""
    from ensemble.cli.predict import run_predict

    with tempfile.TemporaryDirectory() as tmp:
        got = run_predict(folder, test_csv, Path(tmp) / "s.csv", tta=tta, progress=False, say=lambda _: None)
    return got.proba


def final_model_proba(root: Path, test_csv: Path, storage: Any) -> tuple[Any, str, bool]:
    """(the recorded final model's test probabilities, where they come from, whether the refit is its model)."""
    import numpy as np

    final = json.loads((root / "report" / "summary.json").read_text())["final_model"]
    full = root / "ensemble-full" / "manifest.json"
    if full.is_file():
        info = json.loads(full.read_text()).get("refit_full", {})
        if info.get("final") == final and info.get("source_sha256") == _source_sha256(root, final, storage):
            return _predict(full.parent, test_csv, tta=True), f"{final}, refitted (ensemble-full/)", True
    row = EnsembleRow.parse(final)
    if row is not None:
        return _predict(root / "ensemble", test_csv, tta=row is not EnsembleRow.NO_TTA), f"{final} (ensemble/)", False
    folder = _trial_folder(storage, final)
    return np.load(folder / "proba_test.npy"), f"{final} ({folder.name}/proba_test.npy)", False


def submission_is_final_models(root: Path, test_csv: Path, storage: Any) -> str:
    """Whether submission.csv's labels are the argmax of the final model that report/summary.json records
    (its refit in ensemble-full/ when that was refitted from it), row by row: "ok", else what differs."""
    import numpy as np

    try:
        proba, source, refitted = final_model_proba(root, test_csv, storage)
        summary = json.loads((root / "report" / "summary.json").read_text())
        rows = [line.split(",") for line in (root / "submission.csv").read_text().split()[1:]]
        got = np.array([int(label) for _, label in rows])
    except Exception as exc:  # a final model that cannot be found or predicted is a broken invariant
        return f"{type(exc).__name__}: {exc}"[:300]
    if refitted and not summary.get("refit_full"):
        return f"ensemble-full/ was refitted from {summary['final_model']} but report/summary.json records no refit"
    if got.shape != (len(proba),):
        return f"{len(got)} submission rows, {len(proba)} predicted by {source}"
    want = proba.argmax(axis=1)
    top2 = np.sort(proba, axis=1)[:, -2:]
    differ = np.flatnonzero(got != want)
    real = [i for i in differ if top2[i, 1] - top2[i, 0] >= NEAR_TIE]
    if real:
        return f"{len(real)} of {len(got)} labels differ from {source} (first rows {[int(i) + 1 for i in real[:5]]})"
    return "ok" if not len(differ) else f"ok ({len(differ)} near-tie rows differ from {source})"
