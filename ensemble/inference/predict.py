"""Load a built ensemble (hash-checked) and predict class probabilities, with TTA.

The ensemble folder is self-contained: ``manifest.json`` lists the members, their weights,
the TTA views and the sha256 of every artifact, so ``ensemble predict`` works on a machine
that never saw the run. Members are ``.keras`` files, which load under any Keras 3 backend
(TensorFlow, JAX, torch) whatever backend trained them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ensemble.errors import ArtifactError, DataError, UsageError
from ensemble.search.cnn.simplify import PRECISIONS, bfloat16_model, inference_model, native_bfloat16
from ensemble.io import atomic_write, read_json
from ensemble.combine.tta import IDENTITY, SIDE, stack_views

MANIFEST = "manifest.json"
FORMAT = "ensemble-manifest/1"
N_CLASSES = 10
INPUT_SPEC = "float32 (N, 28, 28, 1) raw pixel values 0-255; rescaling is inside each model"
Advance = Callable[[int], None]
log = logging.getLogger(__name__)


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of uint8 images and their shape: identifies a test set."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    return h.hexdigest()


def as_images(x: np.ndarray, what: str = "images") -> np.ndarray:
    """(N, 28, 28) uint8 images from (N, 28, 28), (N, 28, 28, 1) or (N, 784), else a clear DataError."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == SIDE * SIDE:
        a = a.reshape(-1, SIDE, SIDE)
    elif a.ndim == 4 and a.shape[1:] == (SIDE, SIDE, 1):
        a = a[..., 0]
    if a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise DataError(f"{what}: expected shape (N, 28, 28) or (N, 784) with N > 0, got {a.shape}")
    if a.dtype != np.uint8:
        if np.any((a < 0) | (a > 255)) or not np.all(np.isfinite(a)):
            raise DataError(f"{what}: pixel values must be raw 0-255")
        a = a.astype(np.uint8)
    return a


class _OneTracePerModel(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls ... triggered tf.function retracing" warning.

    Every member has its own predict function, traced once for the one batch shape used (the last
    batch is padded); with five or more members TensorFlow counts those first traces together and
    warns, although nothing is retraced. Other TensorFlow warnings pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def load_keras_model(path: str | Path, name: str = "", *, data: bytes | None = None) -> Any:
    """Load a ``.keras`` member under the current backend (safe mode) and check its input and output shapes.

    With ``data`` (bytes already checked against the manifest) the model is built from those bytes,
    through a private temporary copy since ``keras.saving.load_model`` takes only paths; ``path``
    then only names the member in errors. Without it, ``path`` is loaded (a trial's own model).
    """
    import keras

    import ensemble.search.cnn.augment  # noqa: F401  (registers RandomAffine, the CNNs' augmentation layer)

    tf_log = logging.getLogger("tensorflow")
    if not any(isinstance(f, _OneTracePerModel) for f in tf_log.filters):
        tf_log.addFilter(_OneTracePerModel())

    label = name or str(path)
    try:
        if data is None:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        else:
            with _private_copy(data, ".keras") as copy:
                model = keras.saving.load_model(str(copy), compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise ArtifactError(f"{path}: cannot load Keras model for member {label}: {_one_line(exc)}") from exc
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or shape[1:] not in ((SIDE, SIDE, 1), (None, None, 1)):
        raise ArtifactError(f"{path}: member {label} expects input {model.input_shape}, not (N, 28, 28, 1)")
    if tuple(model.output_shape)[1:] != (N_CLASSES,):
        raise ArtifactError(f"{path}: member {label} outputs {model.output_shape}, not (N, 10) probabilities")
    return model


@contextmanager
def _private_copy(data: bytes, suffix: str) -> Iterator[Path]:
    """``data`` in a file only this user can read (0600, in a fresh 0700 folder), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ensemble-load-"))
    try:
        path = folder / f"artifact{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (library messages can span many)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def member_probas(
    models: Sequence[Any],
    images: np.ndarray,
    views: Sequence[str],
    *,
    batch_size: int = 128,
    advance: Advance | None = None,
    names: Sequence[str] = (),
    workers: int | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Probabilities of every model under every view: float32 (M, V, N, 10).

    Each batch of ``batch_size`` images is expanded to all its views (view-major, one array of
    V x batch_size images) and given to each model in one ``predict_on_batch`` call, the last
    batch padded so that every call has one shape. With ``workers`` > 1 the *models* are shared
    out among that many threads, each predicting all batches for its own models: no model is
    ever called from two threads at once (calls on one model from several threads crashed under
    the JAX backend), while two calls can still run at once on a small CPU.

    ``precision`` is float32 (default) or bfloat16 (opt-in, see :func:`ensemble.search.cnn.simplify.bfloat16_model`);
    None reads the ``ENSEMBLE_PREDICT_PRECISION`` environment variable.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    images = as_images(images)
    models = _in_precision(models, resolve_precision(precision))
    n, v = len(images), len(views)
    out = np.empty((len(models), v, n, N_CLASSES), np.float32)
    full = min(batch_size, n)
    starts = list(range(0, n, batch_size))

    def views_of(start: int) -> tuple[int, np.ndarray]:
        chunk = images[start : start + batch_size]
        b = len(chunk)
        if b < full:  # pad the last batch: every call has one shape, so no backend retraces
            chunk = np.concatenate([chunk, np.zeros((full - b, *chunk.shape[1:]), chunk.dtype)])
        return b, stack_views(views, chunk)

    def predict(m: int, start: int, b: int, xb: np.ndarray) -> None:
        p = np.asarray(models[m].predict_on_batch(xb), dtype=np.float32)
        if p.shape != (v * full, N_CLASSES):
            raise ArtifactError(f"member {_name(names, m)}: output shape {p.shape}, expected ({v * full}, 10)")
        p = p.reshape(v, full, N_CLASSES)[:, :b]
        if start == 0 and (p.min() < -1e-4 or np.abs(p.sum(axis=-1) - 1).max() > 1e-3):
            raise ArtifactError(f"member {_name(names, m)}: outputs are not softmax probabilities")
        out[m, :, start : start + b] = p

    # First batch alone, every model: traces/compiles each once and checks its outputs.
    b, xb = views_of(starts[0])
    for m in range(len(models)):
        predict(m, starts[0], b, xb)
    if advance is not None:
        advance(b)
    rest = starts[1:]
    workers = max(1, min(default_workers() if workers is None else workers, len(models)))
    if workers == 1 or not rest:
        for start in rest:
            b, xb = views_of(start)
            for m in range(len(models)):
                predict(m, start, b, xb)
            if advance is not None:
                advance(b)
        return out

    import threading
    from concurrent.futures import ThreadPoolExecutor

    done = [0] * len(rest)  # per batch: how many threads have predicted it; the last one advances
    lock = threading.Lock()

    def run(own: list[int]) -> None:
        for i, start in enumerate(rest):
            b, xb = views_of(start)
            for m in own:
                predict(m, start, b, xb)
            with lock:
                done[i] += 1
                last = done[i] == workers
            if last and advance is not None:
                advance(b)

    ids = list(range(len(models)))
    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(run, ids[k::workers]) for k in range(workers)]:
            fut.result()
    return out


PRECISION_ENV = "ENSEMBLE_PREDICT_PRECISION"


def resolve_precision(precision: str | None = None) -> str:
    """``precision``, else ``$ENSEMBLE_PREDICT_PRECISION``, else float32; checked against PRECISIONS."""
    value = (precision or os.environ.get(PRECISION_ENV) or "float32").strip().lower()
    if value not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got '{value}' (${PRECISION_ENV})")
    return value


def _in_precision(models: Sequence[Any], precision: str) -> list[Any]:
    """The models as they predict in ``precision`` (bfloat16 copies; float32 models as given)."""
    if precision == "float32":
        return list(models)
    if not native_bfloat16():
        log.warning("bfloat16 prediction on a CPU without AVX512-BF16/AMX: emulated, likely slower than float32")
    return [bfloat16_model(m) for m in models]


def default_workers() -> int:
    """Threads predicting at once, each with its own members (see :func:`member_probas`). Under
    TensorFlow, whose ops already use every core, one and two measured the same on 2 cores; two
    let a backend whose ops use one core (torch was measured up to 1.5x faster) use both."""
    return 2


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if i < len(names) else f"#{i}"


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Advance]:
    """A rich progress bar on stderr (images done, rate, time left); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# ------------------------------------------------------------------------------ ensemble


@dataclass
class Member:
    """One ensemble member: a Keras model (CNN) or stored probabilities (baseline)."""

    name: str
    kind: str
    weight: float
    file: str | None = None
    probas: dict[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    model: Any = None
    #: A baseline's model files as loaded: file name -> path in the manifest (picked from the manifest).
    model_files: dict[str, str] = field(default_factory=dict)


@dataclass
class Ensemble:
    """A loaded, hash-verified ensemble folder."""

    folder: Path
    manifest: dict[str, Any]
    members: list[Member]

    @property
    def views(self) -> list[str]:
        return list(self.manifest["tta"]["views"])


_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _artifacts(folder: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
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
    for rel, expected in _artifacts(folder, manifest).items():
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
    expected = _artifacts(folder, manifest).get(rel)
    if expected is None:
        raise ArtifactError(f"{folder / str(rel)}: not listed with a sha256 in {MANIFEST}, refusing to load it")
    path, fh = _open_listed(folder, rel)
    with fh:
        data = fh.read()
    _check_sha(path, hashlib.sha256(data).hexdigest(), expected)
    return data


def _read_manifest(folder: Path) -> dict[str, Any]:
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


def _member(folder: Path, entry: Any, hashed: Mapping[str, str]) -> Member:
    """One manifest member entry, every file it names hash-listed; a baseline's model files picked here."""
    mpath = folder / MANIFEST
    try:
        m = Member(
            str(entry["name"]),
            str(entry["kind"]),
            float(entry["weight"]),
            entry.get("file"),
            dict(entry.get("probas", {})),
            entry.get("model_dir"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{mpath}: malformed member entry ({_one_line(exc)})") from exc
    for rel in ([m.file] if m.file else []) + list(m.probas.values()):
        if not isinstance(rel, str) or rel not in hashed:
            raise ArtifactError(f"{folder / str(rel)}: member {m.name}'s file has no sha256 in {MANIFEST}")
    if m.model_dir:
        from ensemble.search.baselines.models import family_kind, model_files

        prefix = f"{m.model_dir}/"
        listed = [r[len(prefix) :] for r in hashed if r.startswith(prefix) and "/" not in r[len(prefix) :]]
        names = model_files(listed, family_kind(entry.get("study")), where=f"{folder / m.model_dir}")
        m.model_files = {n: prefix + n for n in names}
    if m.kind == "cnn" and not m.file:
        raise ArtifactError(f"{mpath}: CNN member {m.name} has no model file")
    return m


def load_ensemble(folder: str | Path, *, load_models: bool = True) -> Ensemble:
    """Read ``manifest.json``, verify every artifact's hash, then load the members from verified bytes."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    verify_artifacts(folder, manifest)
    hashed = _artifacts(folder, manifest)
    entries = manifest.get("members")
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{folder / MANIFEST}: no members")
    members = [_member(folder, entry, hashed) for entry in entries]
    if load_models:
        for m in members:
            if m.file:
                data = read_verified(folder, manifest, m.file)
                m.model = inference_model(load_keras_model(folder / m.file, m.name, data=data))
    return Ensemble(folder, manifest, members)


def _baseline(ens: Ensemble, m: Member, images: np.ndarray) -> np.ndarray:
    """A baseline's probabilities: stored ones for the run's own test set, else its saved model's.

    Both come from bytes read once and checked against the manifest; only the files the manifest
    lists for the member are read, never whatever else sits in its folder.
    """
    data = ens.manifest["data"]
    fp = images_fingerprint(images)
    if "test" in m.probas and fp == data.get("test_fingerprint"):
        rel = m.probas["test"]
        raw = read_verified(ens.folder, ens.manifest, rel)
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as exc:
            raise ArtifactError(f"{ens.folder / rel}: not a .npy array ({_one_line(exc)})") from exc
    if m.model_files:
        try:
            from ensemble.search.baselines.models import full_proba, load_saved
        except ImportError as exc:
            raise ArtifactError(f"member {m.name}: cannot load baseline models here ({exc})") from exc
        blobs = {name: read_verified(ens.folder, ens.manifest, rel) for name, rel in m.model_files.items()}
        return full_proba(load_saved(blobs, ens.folder / str(m.model_dir)), images).astype(np.float32)
    raise DataError(
        f"member {m.name} is a baseline with stored probabilities only; it can predict the run's own test set "
        f"(fingerprint {str(data.get('test_fingerprint'))[:16]}, {data.get('n_test')} images) but these "
        f"{len(images)} images have fingerprint {fp[:16]}; rebuild without --include-baselines"
    )


def predict_proba(
    ens: Ensemble,
    images: np.ndarray,
    *,
    tta: bool = True,
    batch_size: int = 128,
    progress: bool = False,
    workers: int | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Ensemble probabilities (N, 10): weighted mean over members of their mean over views.

    ``precision``: see :func:`member_probas` (float32 unless bfloat16 is asked for).
    """
    images = as_images(images, "test images")
    views = ens.views if tta else [IDENTITY]
    cnns = [m for m in ens.members if m.model is not None]
    total = np.zeros((len(images), N_CLASSES), np.float64)
    if cnns:
        with progress_bar(len(images), f"predict {len(cnns)} models x {len(views)} views", progress) as adv:
            probs = member_probas(
                [m.model for m in cnns],
                images,
                views,
                batch_size=batch_size,
                advance=adv,
                names=[m.name for m in cnns],
                workers=workers,
                precision=precision,
            )
        for m, p in zip(cnns, probs):
            total += m.weight * p.mean(axis=0)
    for m in ens.members:
        if m.model is None:
            total += m.weight * _baseline(ens, m, images)
    return (total / sum(m.weight for m in ens.members)).astype(np.float32)


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save an array as .npy."""
    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write(path, buf.getvalue())
