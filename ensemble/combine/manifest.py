"""The ensemble folder's manifest: its format, the artifacts it lists and their sha256 checks.

``manifest.json`` lists the members, their weights, the TTA views and the sha256 of every artifact,
so an ensemble folder is self-contained. A file is read only when the manifest lists it, from the
very bytes whose hash was checked.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import stat
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ensemble import __version__
from ensemble.errors import ArtifactError
from ensemble.io import read_json, write_json
from ensemble.search.artifacts import sha256_file

if TYPE_CHECKING:
    from ensemble.data.runs import Run

MANIFEST = "manifest.json"
FORMAT = "ensemble-manifest/1"
N_CLASSES = 10
INPUT_SPEC = "float32 (N, 28, 28, 1) raw pixel values 0-255; rescaling is inside each model"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Comparison(StrEnum):
    """The keys of a manifest's ``metrics``: what ``ensemble build`` compared on validation and holdout.

    Stored as their string values, so older manifests read the same.
    """

    BEST_SINGLE = "best_single"
    TOP_K_EQUAL = "top_k_equal"
    TOP_K_EQUAL_TTA = "top_k_equal_tta"
    TOP_K_GREEDY_TTA = "top_k_greedy_tta"
    TOP_K_EQUAL_TTA_REFIT = "top_k_equal_tta_refit"
    TOP_K_GREEDY_TTA_REFIT = "top_k_greedy_tta_refit"

    @classmethod
    def final(cls, weights: str) -> Comparison:
        """The final ensemble's entry: the top CNNs (and baselines) with ``weights``, over the TTA views."""
        return cls(f"top_k_{weights}_tta")

    @classmethod
    def final_refit(cls, weights: str) -> Comparison:
        """The same ensemble with its CNNs refitted on train + validation (``ensemble build --refit``)."""
        return cls(f"top_k_{weights}_tta_refit")


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of uint8 images and their shape: identifies a test set."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    return h.hexdigest()


def _safe_path(folder: Path, rel: str) -> Path:
    """``folder / rel`` for a manifest path that stays inside ``folder``: relative, no ``..``, no symlink out."""
    p = Path(rel) if isinstance(rel, str) else None
    if p is None or not p.parts or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ArtifactError(f"{folder / MANIFEST}: artifact path '{rel}' leaves the ensemble folder")
    path = folder / p
    try:
        inside = path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError):  # missing or a link loop: reported when it is opened
        return path
    if not inside:
        raise ArtifactError(f"{path}: a symlink out of the ensemble folder, refusing to load it")
    return path


def listed_artifacts(folder: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    """The manifest's ``artifacts`` (relative path -> sha256), checked to be that shape."""
    table = manifest.get("artifacts")
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in table.items()
    ):
        raise ArtifactError(f"{folder / MANIFEST}: 'artifacts' must map relative paths to sha256 hex digests")
    return table


def _open_listed(folder: Path, rel: str) -> tuple[Path, BinaryIO]:
    """Open a manifest path for reading: inside the folder, a regular file, no link followed when opening."""
    path = _safe_path(folder, rel)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path.resolve(), flags)  # links inside the folder were resolved (and checked) above
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing, but listed in {MANIFEST}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise ArtifactError(f"{path}: not a regular file, refusing to load it")
    return path, fh


def _check_sha(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:16]}... does not match {MANIFEST} ({expected[:16]}...); "
            "the file changed after `ensemble build`, refusing to load it"
        )


def verify_artifacts(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse any artifact that is missing, outside the folder or whose sha256 differs from the manifest."""
    for rel, expected in listed_artifacts(folder, manifest).items():
        path, fh = _open_listed(folder, rel)
        h = hashlib.sha256()
        with fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        _check_sha(path, h.hexdigest(), expected)


def read_verified(folder: Path, manifest: Mapping[str, Any], rel: str) -> bytes:
    """A manifest-listed file's bytes, read once and checked against its sha256.

    Load from these bytes, never from the path again: the file cannot change between check and load.
    A file the manifest does not list is refused, whatever is on disk.
    """
    expected = listed_artifacts(folder, manifest).get(rel)
    if expected is None:
        raise ArtifactError(f"{folder / str(rel)}: not listed with a sha256 in {MANIFEST}, refusing to load it")
    path, fh = _open_listed(folder, rel)
    with fh:
        data = fh.read()
    _check_sha(path, hashlib.sha256(data).hexdigest(), expected)
    return data


def read_manifest(folder: Path) -> dict[str, Any]:
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; expected an ensemble folder written by `ensemble build`")
    try:
        manifest = read_json(mpath)
    except ValueError as exc:
        raise ArtifactError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not an ensemble manifest (format {FORMAT} expected)")
    return manifest


def versions() -> dict[str, str]:
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


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every file in ``folder`` (by relative path) and write ``manifest.json``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest["artifacts"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def new_manifest(run: Run, entries: list[dict], extra: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    import keras

    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run.name,
        "members": entries,
        "weights": extra["weights"],
        "tta": extra["tta"],
        "preprocessing": {"input": INPUT_SPEC, "views": "applied to raw pixels before each model"},
        "keras": {"backend": keras.backend.backend(), "version": keras.version()},
        "versions": versions(),
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
