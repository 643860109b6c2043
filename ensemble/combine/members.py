"""Ensemble members' models: loading a ``.keras`` file safely, and their class probabilities under TTA views.

Shared by the build (validation probabilities of candidate views), the refit and ``ensemble predict``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.combine.manifest import N_CLASSES
from ensemble.combine.tta import SIDE, stack_views
from ensemble.data.arrays import as_images
from ensemble.errors import ArtifactError, EnsembleError, UsageError, one_line
from ensemble.search.cnn.simplify import bfloat16_model, inference_model, native_bfloat16, resolve_precision

if TYPE_CHECKING:
    import keras

Advance = Callable[[int], None]
log = logging.getLogger(__name__)


class _OneTracePerModel(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls ... triggered tf.function retracing" warning.

    Every member has its own predict function, traced once for the one batch shape used (the last
    batch is padded); with five or more members TensorFlow counts those first traces together and
    warns, although nothing is retraced. Other TensorFlow warnings pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def load_keras_model(path: str | Path, name: str = "", *, data: bytes | None = None) -> keras.Model:
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
        raise ArtifactError(f"{path}: cannot load Keras model for member {label}: {one_line(exc)}") from exc
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or shape[1:] not in ((SIDE, SIDE, 1), (None, None, 1)):
        raise ArtifactError(f"{path}: member {label} expects input {model.input_shape}, not (N, 28, 28, 1)")
    if tuple(model.output_shape)[1:] != (N_CLASSES,):
        raise ArtifactError(f"{path}: member {label} outputs {model.output_shape}, not (N, 10) probabilities")
    return model


def prediction_copy(model: keras.Model, name: str) -> keras.Model:
    """:func:`inference_model` of ``model`` (BatchNorm folded); a backend's error there is one ArtifactError line."""
    try:
        return inference_model(model)
    except EnsembleError:
        raise
    except Exception as exc:  # the folding runs the model once, eagerly, under the backend
        raise ArtifactError(
            f"member {name}: cannot prepare it for prediction under the Keras {_backend()} backend: {one_line(exc)}"
        ) from exc


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
    batch padded so that every call has one shape. With ``workers`` > 1 the batches are shared
    out among that many threads, with one lock per model: two calls run at once on a small CPU,
    always on two different models. No model is ever called from two threads at once, which
    every backend needs (under JAX, ``predict_on_batch`` donates the model's state buffers to its
    jitted step, so a second call at the same time fails with "Buffer has been deleted or
    donated"). A backend's error while predicting is an ArtifactError naming the member and the backend.

    ``precision`` is float32 (default) or bfloat16 (opt-in, see :func:`ensemble.search.cnn.simplify.bfloat16_model`);
    None reads the ``ENSEMBLE_PREDICT_PRECISION`` environment variable.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    images = as_images(images)
    job = _Batches(_in_precision(models, resolve_precision(precision)), images, list(views), batch_size, names)
    starts = list(range(0, len(images), batch_size))
    job.predict_all(range(len(job.models)), starts[:1], advance)  # traces/compiles each model once, checks outputs
    rest = starts[1:]
    workers = max(1, min(default_workers() if workers is None else workers, len(job.models)))
    if workers == 1 or not rest:
        job.predict_all(range(len(job.models)), rest, advance)
    else:
        _in_threads(job, rest, workers, advance)
    return job.out


@dataclass
class _Batches:
    """Batches of images expanded to their views, and the models' probabilities on them (``out``: M, V, N, 10)."""

    models: list[Any]
    images: np.ndarray
    views: list[str]
    batch_size: int
    names: Sequence[str]
    out: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.out = np.empty((len(self.models), len(self.views), len(self.images), N_CLASSES), np.float32)
        self.full = min(self.batch_size, len(self.images))

    def views_of(self, start: int) -> tuple[int, np.ndarray]:
        chunk = self.images[start : start + self.batch_size]
        b = len(chunk)
        if b < self.full:  # pad the last batch: every call has one shape, so no backend retraces
            chunk = np.concatenate([chunk, np.zeros((self.full - b, *chunk.shape[1:]), chunk.dtype)])
        return b, stack_views(self.views, chunk)

    def predict(self, m: int, start: int, b: int, xb: np.ndarray) -> None:
        v, full = len(self.views), self.full
        try:
            p = np.asarray(self.models[m].predict_on_batch(xb), dtype=np.float32)
        except Exception as exc:  # a backend's own error (XLA, torch, TensorFlow): one line, not a traceback
            why = f"prediction failed under the Keras {_backend()} backend: {one_line(exc)}"
            raise ArtifactError(f"member {_name(self.names, m)}: {why}") from exc
        if p.shape != (v * full, N_CLASSES):
            raise ArtifactError(f"member {_name(self.names, m)}: output shape {p.shape}, expected ({v * full}, 10)")
        p = p.reshape(v, full, N_CLASSES)[:, :b]
        if start == 0 and (p.min() < -1e-4 or np.abs(p.sum(axis=-1) - 1).max() > 1e-3):
            raise ArtifactError(f"member {_name(self.names, m)}: outputs are not softmax probabilities")
        self.out[m, :, start : start + b] = p

    def predict_all(self, models: Iterable[int], starts: list[int], advance: Advance | None) -> None:
        models = list(models)
        for start in starts:
            b, xb = self.views_of(start)
            for m in models:
                self.predict(m, start, b, xb)
            if advance is not None:
                advance(b)


def _in_threads(job: _Batches, starts: list[int], workers: int, advance: Advance | None) -> None:
    """The batches shared out among ``workers`` threads; each thread predicts every model on its batch.

    One lock per model: a thread takes the models of its batch in whatever order they are free
    (another thread may be predicting one of them on its own batch), so no model is ever called
    from two threads at once and neither thread waits while a model is free. Each batch's views
    are computed once.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    locks = [threading.Lock() for _ in job.models]
    failed = threading.Event()  # one thread's error stops the others at their next batch

    def next_model(left: list[int]) -> int:
        for m in left:
            if locks[m].acquire(blocking=False):
                return m
        locks[left[0]].acquire()  # every model left is busy in another thread: wait for one
        return left[0]

    def run(start: int) -> None:
        if failed.is_set():
            return
        b, xb = job.views_of(start)
        left = list(range(len(job.models)))
        try:
            while left:
                m = next_model(left)
                try:
                    job.predict(m, start, b, xb)
                finally:
                    locks[m].release()
                left.remove(m)
        except BaseException:
            failed.set()
            raise
        if advance is not None:
            advance(b)

    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(run, start) for start in starts]:
            fut.result()


def _in_precision(models: Sequence[Any], precision: str) -> list[Any]:
    """The models as they predict in ``precision`` (bfloat16 copies; float32 models as given)."""
    if precision == "float32":
        return list(models)
    if not native_bfloat16():
        log.warning("bfloat16 prediction on a CPU without AVX512-BF16/AMX: emulated, likely slower than float32")
    return [bfloat16_model(m) for m in models]


def default_workers() -> int:
    """Threads predicting at once, never two on one model (see :func:`member_probas`). On 2 cores,
    two threads measured up to 1.2x faster than one under TensorFlow and torch, and the same as
    one under JAX (docs/benchmarks.md, "Keras backends")."""
    return 2


def _backend() -> str:
    import keras

    return keras.backend.backend()


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
