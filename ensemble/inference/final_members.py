"""The members of ``runs/NAME/ensemble-full`` added by the anytime final stage (:mod:`ensemble.inference.extend`).

An added member is a copy of one of the final model's CNN configurations, trained on every labeled
digit with a new seed. Its manifest entry names its configuration (``extra_of``), seed, epochs and
rows; its test probabilities (mean over the TTA views) are kept beside it, so the vote is recomputed
without predicting again. A configuration keeps the weight the build chose for it on validation
(``group_weight``), shared among its members in proportion to the epochs each trained.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.combine.manifest import MANIFEST, Manifest, MemberEntry, read_manifest
from ensemble.combine.records import MemberRefit
from ensemble.errors import ArtifactError
from ensemble.inference.refit import FOLDER, test_proba_file
from ensemble.io import read_json, rebuilt_dir, save_npy, write_json

if TYPE_CHECKING:
    import keras

    from ensemble.data.runs import Run
    from ensemble.search.cnn.config import CnnConfig

SEED_STEP = 1000  # member k of a configuration trains with seed + k * SEED_STEP + trial


def sources_by_weight(manifest: Manifest) -> list[str]:
    """The CNN configurations of the final model (not their extra members), highest weight first."""
    cnns = [e for e in manifest.cnns if not e.extra_of]
    return [e.name for e in sorted(cnns, key=lambda e: -(e.group_weight if e.group_weight is not None else e.weight))]


def member_epochs(entry: MemberEntry, folder: Path) -> int:
    """The epochs a CNN member trained: its refit's, else its configuration's."""
    refit = entry.refit_full
    if refit is not None and refit.epochs:
        return int(refit.epochs)
    return int(read_json(folder / str(entry.config))["epochs"])


def reweigh(members: tuple[MemberEntry, ...], folder: Path) -> tuple[MemberEntry, ...]:
    """Share each configuration's weight among its members in proportion to their epochs."""
    out = list(members)
    for i, source in enumerate(members):
        if not source.is_cnn or source.extra_of:
            continue
        group_weight = source.group_weight if source.group_weight is not None else source.weight
        group = [i] + [j for j, e in enumerate(members) if e.extra_of == source.name]
        epochs = [member_epochs(members[j], folder) for j in group]
        for j, n in zip(group, epochs):
            out[j] = replace(out[j], weight=group_weight * n / sum(epochs))
        out[i] = replace(out[i], group_weight=group_weight)
    return tuple(out)


def vote(manifest: Manifest, folder: Path) -> np.ndarray:
    """The weighted soft vote of every member's test probabilities, read from ``folder``."""
    from ensemble.combine.voting import soft_vote

    parts, weights = [], []
    for e in manifest.members:
        rel = e.test_proba if e.is_cnn else (e.probas or {}).get("test")
        parts.append(np.load(folder / str(rel)))
        weights.append(e.weight)
    return soft_vote(parts, weights).astype(np.float32)


def can_extend(run: Run) -> str | None:
    """Why ``ensemble-full`` cannot take more members (None: it can)."""
    folder = run.path(FOLDER)
    if not (folder / MANIFEST).is_file():
        return "the final model was not refitted"
    cnns = read_manifest(folder).cnns
    if not cnns:
        return "the final model has no CNN"
    if any(not e.test_proba or not (folder / e.test_proba).is_file() for e in cnns):
        return "its refit predates per-member test probabilities (re-run with --restart)"
    return None


def publish(run: Run, entry: MemberEntry, model: keras.Model, config: CnnConfig, proba: np.ndarray) -> None:
    """Rebuild ``ensemble-full`` with one more member in a temporary folder and swap it in whole."""
    from ensemble.combine.manifest import write_manifest
    from ensemble.search.cnn.simplify import save_for_inference

    with rebuilt_dir(run.path(FOLDER)) as tmp:
        shutil.copytree(run.path(FOLDER), tmp)
        m = read_manifest(tmp)
        save_for_inference(model, tmp / str(entry.file))
        write_json(tmp / str(entry.config), config.to_json())
        save_npy(tmp / str(entry.test_proba), proba.astype(np.float32))
        if m.refit_full is None:
            raise ArtifactError(f"{run.path(FOLDER, MANIFEST)}: not a refit (no refit_full record)")
        members = reweigh((*m.members, entry), tmp)
        refit = replace(m.refit_full, extra_members=sum(1 for e in members if e.extra_of))
        m = replace(m, members=members, refit_full=refit)
        save_npy(tmp / "proba_test.npy", vote(m, tmp))
        write_manifest(tmp, m)


def new_entry(manifest: Manifest, source: str, seed: int, epochs: int, rows: int) -> MemberEntry:
    src = manifest.member(source)
    name = f"{source}-seed{seed}"
    return MemberEntry(
        name=name,
        kind="cnn",
        weight=0.0,  # set by reweigh
        file=f"members/{name}.keras",
        config=f"members/{name}.config.json",
        study=src.study,
        trial=src.trial,
        extra_of=source,
        refit_full=MemberRefit(True, epochs=epochs, rows=rows, seed=seed),
        test_proba=test_proba_file(name),
    )


def member_seed(manifest: Manifest, source: str, seed: int) -> int:
    """A seed no member of ``source`` has used: the refit used ``seed + trial``."""
    src = manifest.member(source)
    k = 1 + sum(1 for e in manifest.members if e.extra_of == source)
    return seed + k * SEED_STEP + (src.trial or 0)
