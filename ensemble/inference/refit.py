"""Final refit on every labeled digit (AutoGluon's ``refit_full``): ``runs/NAME/ensemble-full/``.

After selection (members, TTA views and weights, all chosen on validation) and the holdout report,
each CNN of the final model is trained again, with its own config, seed and epoch count, on
train + validation + holdout: every labeled digit. The refitted ensemble keeps the weights and views
of the one it was made from and writes the test probabilities the submission is taken from.

The refitted models have no holdout score of their own (they have seen the holdout): the report
shows the holdout figures of the same configurations before the refit. Baseline members keep their
fits on the training part. The manifest names its source (the final model and the sha256 of the
ensemble manifest it came from), so a report never pairs a refit with another ensemble.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.combine.manifest import FORMAT, MANIFEST, Manifest, MemberEntry, read_manifest
from ensemble.combine.records import EnsembleRow, MemberRefit, Tta
from ensemble.combine.tta import IDENTITY
from ensemble.errors import ArtifactError
from ensemble.io import read_json, rebuilt_dir, save_npy
from ensemble.search.artifacts import CNN_STUDY, ModelId, sha256_file, trial_path
from ensemble.search.cnn.config import CnnConfig
from ensemble.search.cnn.simplify import save_for_inference
from ensemble.search.devices import Devices, select

if TYPE_CHECKING:
    import keras

    from ensemble.data.runs import Run
    from ensemble.inference.refit_devices import RefitJob

FOLDER = "ensemble-full"


@dataclass(frozen=True)
class RefitSource:
    """What the final model is made of: its manifest (members, weights), the views it votes over, its files.

    ``trial_folder``: the final model is one CNN trial, whose model and config are in that folder (its
    manifest is the one member it is); None: the ensemble folder, whose manifest lists every file.
    """

    final: str
    manifest: Manifest
    views: tuple[str, ...]
    source_sha256: str
    trial_folder: Path | None = None

    def member_files(self, run: Run, entry: MemberEntry) -> tuple[Path, CnnConfig]:
        """(the member's current .keras file, its config) from the ensemble folder or the trial folder."""
        if self.trial_folder is not None:
            return self.trial_folder / "model.keras", _read_config(self.trial_folder / "config.json")
        ens = run.path("ensemble")
        if not entry.config or not entry.file:
            where = ens / (entry.file or MANIFEST)
            raise ArtifactError(f"{where}: no config recorded for {entry.name}; cannot refit it")
        return ens / entry.file, _read_config(ens / entry.config)


def _read_config(path: Path) -> CnnConfig:
    """A member's config file (a trial's config.json also holds its best_epoch: skipped)."""
    return CnnConfig.from_json(read_json(path), where=str(path), extra="ignore")


def refit_source(run: Run, final: str) -> RefitSource | None:
    """The final model as a refittable ensemble, or None (a baseline: nothing to refit)."""
    row = EnsembleRow.parse(final)
    src = run.path("ensemble", MANIFEST)
    if row is not None and src.is_file():
        m = read_manifest(src.parent)
        views = (IDENTITY,) if row is EnsembleRow.NO_TTA else m.tta.views
        return RefitSource(final, m, views, sha256_file(src))
    model = ModelId.parse(final)
    if model is None or model.study != CNN_STUDY:
        return None
    folder = trial_path(run, CNN_STUDY, model.trial)
    if not (folder / "model.keras").is_file():
        return None
    entry = MemberEntry(
        name=final,
        kind="cnn",
        weight=1.0,
        file=f"members/{final}.keras",
        config=f"members/{final}.config.json",
        study=CNN_STUDY,
        trial=model.trial,
    )
    m = Manifest(FORMAT, (entry,), Tta((IDENTITY,), "none"), {})
    return RefitSource(final, m, (IDENTITY,), sha256_file(folder / "model.keras"), trial_folder=folder)


def current_refit(run: Run, final: str) -> Manifest | None:
    """The manifest of ``ensemble-full`` if it was refitted from this very final model, else None."""
    if not run.path(FOLDER, MANIFEST).is_file():
        return None
    src = refit_source(run, final)
    if src is None:
        return None
    m = read_manifest(run.path(FOLDER))
    info = m.refit_full
    return m if info is not None and info.final == final and info.source_sha256 == src.source_sha256 else None


def refit_full(
    run: Run,
    *,
    final: str,
    deadline: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    storage_url: str | None = None,
    say: Callable[[str], None] = print,
    devices: str | None = None,
) -> Manifest | None:
    """Refit the final model's CNNs on every labeled digit and write ``runs/NAME/ensemble-full/``.

    A member whose refit would end past ``deadline`` keeps its pre-refit model (recorded as skipped).
    ``devices`` (``all``, ``cpu``, GPU ids: :mod:`ensemble.search.devices`): with two or more, the members
    refit one per device at once, each in a trainer pinned to its device; else one after another here.
    Returns the new manifest, or None when the final model has no CNN to refit.
    """
    src = refit_source(run, final)
    cnns = list(src.manifest.cnns) if src else []
    if src is None or not cnns:
        say(f"final model {final} has no CNN member: nothing to refit")
        return None
    x_all, y_all = run.dataset.x_train, run.dataset.y_train
    with rebuilt_dir(run.path(FOLDER)) as tmp:
        _copy_source(run, src, tmp)
        jobs = _refit_jobs(run, src, cnns, len(x_all), tmp, seed, storage_url)
        chosen = select(devices) if devices else None
        if chosen is not None and len(chosen.devices) > 1:
            say(f"refitting {len(cnns)} CNN member(s) one per device at once: {chosen.describe()}")
            models, record = _refit_on(chosen, jobs, x_all, y_all, deadline, say)
        else:
            models, record = _refit_members(jobs, x_all, y_all, deadline, say)
        proba_test, predict_seconds = _test_proba(run, src, cnns, models, tmp, batch_size)
        manifest = _manifest(run, src, record, len(y_all), proba_test, tmp, predict_seconds)
    return manifest


def _copy_source(run: Run, src: RefitSource, tmp: Path) -> None:
    if src.trial_folder is not None:
        (tmp / "members").mkdir(parents=True)
        shutil.copy2(src.trial_folder / "config.json", tmp / str(src.manifest.members[0].config))
        return
    shutil.copytree(run.path("ensemble"), tmp)
    for stale in ("proba_val.npy", "proba_holdout.npy", "proba_test.npy"):  # the pre-refit ensemble's
        (tmp / stale).unlink(missing_ok=True)


def _refit_jobs(
    run: Run, src: RefitSource, cnns: list[MemberEntry], n_rows: int, tmp: Path, seed: int, storage_url: str | None
) -> list[RefitJob]:
    """What refitting each CNN member takes: its config, seed, epochs, the time needed, its files."""
    from ensemble.inference.refit_devices import RefitJob

    jobs = []
    for entry in cnns:
        path, config = src.member_files(run, entry)
        epochs = config.epochs
        need = epochs * n_rows / trial_speed(run, entry, storage_url)
        member_seed = seed + (entry.trial or 0)
        jobs.append(RefitJob(entry.name, config, member_seed, epochs, need, tmp / str(entry.file), path))
    return jobs


def _refit_members(
    jobs: list[RefitJob], x: np.ndarray, y: np.ndarray, deadline: float | None, say: Callable[[str], None]
) -> tuple[list[keras.Model], dict[str, MemberRefit]]:
    """Refit the members one after another in this process; one that would end past ``deadline`` keeps its model."""
    from ensemble.combine.members import load_keras_model
    from ensemble.search.cnn import model as cnn

    models, record = [], {}
    for job in jobs:
        if deadline is not None and time.time() + job.need_seconds > deadline:
            say(f"{job.name}: no time to refit ({job.need_seconds / 60:.1f} min needed): keeps its pre-refit model")
            models.append(load_keras_model(job.source, job.name))
            shutil.copy2(job.source, job.out)
            record[job.name] = MemberRefit(False, reason="no time left in the budget")
            continue
        say(f"refit {job.name}: {len(x):,} labeled digits x {job.epochs} epochs (~{job.need_seconds / 60:.1f} min)")
        t0 = time.perf_counter()

        def on_epoch(epoch: int, logs: dict[str, float], name: str = job.name, total: int = job.epochs) -> None:
            say(f"  refit {name} epoch {epoch}/{total}: accuracy {logs.get('accuracy', float('nan')):.4f}")

        model, _ = cnn.fit_model(job.config, x, y, seed=job.seed, on_epoch=on_epoch)
        save_for_inference(model, job.out)
        models.append(model)
        seconds = round(time.perf_counter() - t0, 1)
        record[job.name] = MemberRefit(True, epochs=job.epochs, rows=len(x), seed=job.seed, seconds=seconds)
    return models, record


def _refit_on(
    devices: Devices,
    jobs: list[RefitJob],
    x: np.ndarray,
    y: np.ndarray,
    deadline: float | None,
    say: Callable[[str], None],
) -> tuple[list[keras.Model], dict[str, MemberRefit]]:
    """:func:`_refit_members` over several devices at once (:mod:`.refit_devices`); the models loaded back."""
    from ensemble.combine.members import load_keras_model
    from ensemble.inference.refit_devices import refit_on_devices

    record = refit_on_devices(jobs, devices, x, y, deadline=deadline, say=say)
    return [load_keras_model(job.out, job.name) for job in jobs], record


def trial_speed(run: Run, entry: MemberEntry, storage_url: str | None) -> float:
    """The member's measured training speed (images/s) from its trial, else a cautious 1,000."""
    try:
        import optuna

        from ensemble.search.storage import open_storage

        study = optuna.load_study(study_name=str(entry.study), storage=open_storage(run, storage_url))
        return float(study.trials[int(entry.trial or 0)].user_attrs.get("images_per_second") or 1000.0)
    except Exception:  # an unreadable study only makes the estimate cautious
        return 1000.0


def _test_proba(
    run: Run, src: RefitSource, cnns: list[MemberEntry], models: list, tmp: Path, batch_size: int
) -> tuple[np.ndarray, float]:
    """The refitted ensemble's test probabilities and the seconds per member to predict them; each CNN's own
    are saved."""
    from ensemble.combine.members import member_probas, prediction_copy
    from ensemble.combine.voting import soft_vote

    names = [e.name for e in cnns]
    t0 = time.perf_counter()
    fast = [prediction_copy(m, name) for m, name in zip(models, names)]
    views = list(src.views)
    p = member_probas(fast, run.x_test, views, batch_size=batch_size, names=names).mean(axis=1)  # (M, N, 10)
    for entry, proba in zip(cnns, p):  # each CNN's own test vote: a later member re-votes without predicting again
        save_npy(tmp / test_proba_file(entry.name), proba.astype(np.float32))
    seconds = round((time.perf_counter() - t0) / max(1, len(cnns)), 1)  # per member
    baselines = src.manifest.baselines
    parts = list(p) + [np.load(tmp / _probas(e)["test"]) for e in baselines]
    return soft_vote(parts, [e.weight for e in [*cnns, *baselines]]).astype(np.float32), seconds


def _probas(entry: MemberEntry) -> dict[str, str]:
    if entry.probas is None:
        raise ArtifactError(f"{MANIFEST}: baseline member {entry.name} lists no probabilities")
    return entry.probas


def test_proba_file(name: str) -> str:
    """Where ``ensemble-full`` keeps a CNN member's test probabilities (mean over the TTA views)."""
    return f"members/{name}.test.npy"


def _manifest(
    run: Run,
    src: RefitSource,
    record: dict[str, MemberRefit],
    rows: int,
    proba_test: np.ndarray,
    tmp: Path,
    predict_seconds: float,
) -> Manifest:
    """The source's manifest with the refit's members, views, Keras and record; written with its artifacts."""
    from ensemble.combine.manifest import PREPROCESSING, images_fingerprint, keras_info, write_manifest
    from ensemble.combine.records import DataInfo, RefitFull, Weights

    save_npy(tmp / "proba_test.npy", proba_test)
    m = src.manifest
    members = tuple(
        replace(e, refit_full=record.get(e.name), test_proba=test_proba_file(e.name) if e.is_cnn else e.test_proba)
        for e in m.members
    )
    data = m.data or DataInfo(run.meta["data"]["fingerprint"], images_fingerprint(run.x_test), len(run.x_test))
    refit = RefitFull(
        final=src.final,
        source_sha256=src.source_sha256,
        rows=rows,
        predict_seconds=predict_seconds,  # per member: its TTA test predictions
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        note="refitted members have no holdout score of their own; see metrics_before_refit",
    )
    full = replace(
        m,
        members=members,
        weights=m.weights or Weights("single"),
        tta=replace(m.tta, views=src.views),
        preprocessing=m.preprocessing or dict(PREPROCESSING),
        keras=keras_info(),  # what trained the refits
        data=data,
        metrics=None,
        metrics_before_refit=m.metrics if m.metrics is not None else {},
        refit_full=refit,
    )
    return write_manifest(tmp, full)
