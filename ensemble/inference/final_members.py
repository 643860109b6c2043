"""The members of ``runs/NAME/ensemble-full`` added by the anytime final stage (:mod:`ensemble.inference.extend`).

An added member is a copy of one of the final model's CNN configurations, trained on every labeled
digit with a new seed. Its manifest entry names its configuration (``extra_of``), seed, epochs and
rows; its test probabilities (mean over the TTA views) are kept beside it, so the vote is recomputed
without predicting again. A configuration keeps the weight the build chose for it on validation
(``group_weight``), shared among its members in proportion to the epochs each trained.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.inference.refit import FOLDER, test_proba_file
from ensemble.io import read_json, rebuilt_dir, save_npy, write_json

if TYPE_CHECKING:
    from ensemble.data.runs import Run

SEED_STEP = 1000  # member k of a configuration trains with seed + k * SEED_STEP + trial


def extra_names(manifest: dict[str, Any]) -> list[str]:
    return [e["name"] for e in manifest["members"] if e.get("extra_of")]


def sources_by_weight(manifest: dict[str, Any]) -> list[str]:
    """The CNN configurations of the final model (not their extra members), highest weight first."""
    cnns = [e for e in manifest["members"] if e["kind"] == "cnn" and not e.get("extra_of")]
    return [e["name"] for e in sorted(cnns, key=lambda e: -float(e.get("group_weight", e["weight"])))]


def member_epochs(entry: dict[str, Any], folder: Path) -> int:
    """The epochs a CNN member trained: its refit's, else its configuration's."""
    refit = entry.get("refit_full") or {}
    if refit.get("epochs"):
        return int(refit["epochs"])
    return int(read_json(folder / entry["config"])["epochs"])


def reweigh(manifest: dict[str, Any], folder: Path) -> None:
    """Share each configuration's weight among its members in proportion to their epochs."""
    members = manifest["members"]
    for source in [e for e in members if e["kind"] == "cnn" and not e.get("extra_of")]:
        source.setdefault("group_weight", float(source["weight"]))
        group = [source] + [e for e in members if e.get("extra_of") == source["name"]]
        epochs = [member_epochs(e, folder) for e in group]
        for e, n in zip(group, epochs):
            e["weight"] = source["group_weight"] * n / sum(epochs)


def vote(manifest: dict[str, Any], folder: Path) -> np.ndarray:
    """The weighted soft vote of every member's test probabilities, read from ``folder``."""
    from ensemble.combine.voting import soft_vote

    parts, weights = [], []
    for e in manifest["members"]:
        rel = e.get("test_proba") if e["kind"] == "cnn" else (e.get("probas") or {}).get("test")
        parts.append(np.load(folder / rel))
        weights.append(float(e["weight"]))
    return soft_vote(parts, weights).astype(np.float32)


def can_extend(run: Run) -> str | None:
    """Why ``ensemble-full`` cannot take more members (None: it can)."""
    path = run.path(FOLDER, "manifest.json")
    if not path.is_file():
        return "the final model was not refitted"
    m = read_json(path)
    cnns = [e for e in m["members"] if e["kind"] == "cnn"]
    if not cnns:
        return "the final model has no CNN"
    if any(not e.get("test_proba") or not (path.parent / e["test_proba"]).is_file() for e in cnns):
        return "its refit predates per-member test probabilities (re-run with --restart)"
    return None


def publish(run: Run, entry: dict[str, Any], model: Any, config: dict[str, Any], proba: np.ndarray) -> None:
    """Rebuild ``ensemble-full`` with one more member in a temporary folder and swap it in whole."""
    from ensemble.combine.manifest import write_manifest
    from ensemble.search.cnn.simplify import save_for_inference

    with rebuilt_dir(run.path(FOLDER)) as tmp:
        shutil.copytree(run.path(FOLDER), tmp)
        m = read_json(tmp / "manifest.json")
        m.pop("artifacts", None)
        save_for_inference(model, tmp / entry["file"])
        write_json(tmp / entry["config"], config)
        save_npy(tmp / entry["test_proba"], proba.astype(np.float32))
        m["members"].append(entry)
        reweigh(m, tmp)
        save_npy(tmp / "proba_test.npy", vote(m, tmp))
        m["refit_full"] = {**m["refit_full"], "extra_members": len(extra_names(m))}
        write_manifest(tmp, m)


def new_entry(manifest: dict[str, Any], source: str, seed: int, epochs: int, rows: int) -> dict[str, Any]:
    src = next(e for e in manifest["members"] if e["name"] == source)
    name = f"{source}-seed{seed}"
    return {
        "name": name,
        "kind": "cnn",
        "weight": 0.0,  # set by reweigh
        "file": f"members/{name}.keras",
        "config": f"members/{name}.config.json",
        "study": src.get("study"),
        "trial": src.get("trial"),
        "extra_of": source,
        "test_proba": test_proba_file(name),
        "refit_full": {"refit": True, "epochs": epochs, "rows": rows, "seed": seed},
    }


def member_seed(manifest: dict[str, Any], source: str, seed: int) -> int:
    """A seed no member of ``source`` has used: the refit used ``seed + trial``."""
    src = next(e for e in manifest["members"] if e["name"] == source)
    k = 1 + sum(1 for e in manifest["members"] if e.get("extra_of") == source)
    return seed + k * SEED_STEP + int(src.get("trial") or 0)
