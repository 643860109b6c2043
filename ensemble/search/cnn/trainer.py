"""Train one CNN trial and save its artifacts; the speed probe.

:func:`train_and_save` runs in the search process (``SearchSettings(isolate=False)``) or, by
default, in a long-lived trainer process (:mod:`ensemble.search.cnn.pool`), which keeps the search
process's memory flat: TensorFlow keeps ~20 MiB per trained model in process-wide caches that
``clear_session`` does not release (measured by ``benchmarks/search_memory.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

import numpy as np

from ensemble.errors import TrialError, one_line
from ensemble.io import write_json
from ensemble.metrics import accuracy, log_loss
from ensemble.search.artifacts import save_probas
from ensemble.search.cnn import model as cnn
from ensemble.search.cnn.config import CnnConfig, ConfigValue
from ensemble.search.cnn.memory import release as release_memory
from ensemble.search.cnn.simplify import save_for_inference

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import keras

OnEpoch = Callable[[int, dict[str, float]], None]
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_holdout", "x_test")
PARTS = ("val", "holdout", "test")  # what a trial predicts and saves


class TrialMetrics(TypedDict):
    """What a trained trial measured; the trial's user attrs take it as it is.

    ``trainer_pid`` and ``cuda_visible_devices`` (a pinned GPU): added when a trainer process trained it.
    """

    val_accuracy: float
    val_logloss: float
    epochs_run: int
    best_epoch: int
    train_seconds: float
    predict_seconds: float
    images_per_second: float
    params: int
    backend_device: str  # what the backend trained on ('cpu' on a GPU slot without CUDA)
    trainer_pid: NotRequired[int]
    cuda_visible_devices: NotRequired[str]


class FitOutcome(TypedDict):
    """What a refit job (``job="fit"``) of a trainer process measured."""

    epochs_run: int
    seconds: float
    trainer_pid: NotRequired[int]
    cuda_visible_devices: NotRequired[str]


class WorkerError(TrialError):
    """The trial failed inside the worker (its message is the reason)."""


class PruneRequested(Exception):
    """Raised inside training when the parent says the trial should be pruned (control flow, not an error)."""


def train_and_save(
    config: CnnConfig,
    arrays: dict[str, np.ndarray],
    folder: Path,
    *,
    seed: int,
    on_epoch: OnEpoch,
    release: bool = True,
) -> TrialMetrics:
    """Fit, predict val/holdout/test, save model.keras, probabilities and config.json; return metrics.

    ``release``: free Keras's session afterwards (``False``: the caller does, e.g. after answering the search).
    """
    try:
        model, info = cnn.fit_model(
            config,
            arrays["x_train"],
            arrays["y_train"],
            x_val=arrays["x_val"],
            y_val=arrays["y_val"],
            on_epoch=on_epoch,
            seed=seed,
        )
        t0 = time.perf_counter()
        probas = dict(zip(PARTS, predict_parts(model, [arrays[f"x_{part}"] for part in PARTS])))
        predict_s = time.perf_counter() - t0
        _save(folder, model, probas, {**config.to_json(), "best_epoch": info["best_epoch"]})
        params = cnn.count_params(model)
    finally:
        if release:
            release_memory()
    y_val = arrays["y_val"]
    metrics: TrialMetrics = {
        "val_accuracy": accuracy(y_val, probas["val"]),
        "val_logloss": log_loss(y_val, probas["val"]),
        "epochs_run": info["epochs_run"],
        "best_epoch": info["best_epoch"],
        "train_seconds": round(info["train_seconds"], 2),
        "predict_seconds": round(predict_s, 2),
        "images_per_second": round(info["images_per_second"], 1),
        "params": params,
        "backend_device": cnn.device_name(),
    }
    return metrics


def predict_parts(model: keras.Model, parts: list[np.ndarray], batch_size: int = 1024) -> list[np.ndarray]:
    """Probabilities of each of ``parts`` from one prediction of them all, padded to whole batches: every batch
    has one shape, so the backend traces (JAX: compiles) the prediction step once per model, not once per
    part's last batch."""
    x = np.concatenate(parts)
    pad = -len(x) % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    p = cnn.predict_proba(model, x, batch_size=batch_size)
    ends = np.cumsum([len(part) for part in parts])
    return [p[end - len(part) : end] for part, end in zip(parts, ends)]


def die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the parent dies (PR_SET_PDEATHSIG); exit now if it already has."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def partial_dir(folder: Path) -> Path:
    """Where a trial's files are written before the folder is renamed into place."""
    return folder.with_name(f".{folder.name}.partial")


def _save(folder: Path, model: keras.Model, probas: dict[str, np.ndarray], config: dict[str, ConfigValue]) -> None:
    """Write the trial's files into a ``.partial`` folder, then rename it: a kill never leaves half a trial."""
    tmp = partial_dir(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_for_inference(model, tmp / "model.keras")  # loads without ensemble (no RandomAffine)
    save_probas(tmp, probas)
    write_json(tmp / "config.json", config)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def probe_fit(config: CnnConfig, x: np.ndarray, y: np.ndarray, *, images: int = 4096) -> float:
    """Training images/s of ``config`` here, now: the second of two epochs on ``images`` digits of ``x``."""
    keep = np.random.default_rng(0).permutation(len(y))[:images]
    marks: list[float] = []

    def mark(epoch: int, logs: dict[str, float]) -> None:
        marks.append(time.perf_counter())

    cnn.fit_model(config.replace(epochs=2), x[keep], y[keep], on_epoch=mark)
    return len(keep) / max(marks[1] - marks[0], 1e-9)


def _probe_child(
    conn: Connection, arrays_path: str, config: dict[str, ConfigValue], env: dict[str, str], parent: int
) -> None:
    die_with_parent(parent)
    os.environ.update(env)
    try:
        with np.load(arrays_path) as npz:
            x, y = npz["x"], npz["y"]
        conn.send(("done", probe_fit(CnnConfig.from_json(config), x, y, images=len(y))))
    except BaseException as exc:
        conn.send(("error", one_line(exc, typed=True)))
    finally:
        conn.close()


def probe_speed(config: CnnConfig, x: np.ndarray, y: np.ndarray, *, images: int = 4096) -> float:
    """Training images/s of ``config`` on this machine now: the second of two epochs on ``images`` digits.

    Runs in a spawned process (like a trial), so the figure includes what a trial pays per image. The search
    of ``ensemble run`` runs it as its first trainer's first job instead (:meth:`.pool.TrainerPool.probe`).
    """
    import tempfile

    keep = np.random.default_rng(0).permutation(len(y))[:images]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    env = {k: v for k, v in os.environ.items() if k.startswith(("KERAS_", "TF_", "CUDA_", "XLA_"))}
    with tempfile.TemporaryDirectory(prefix="ensemble-probe-") as tmp:
        path = Path(tmp) / "probe.npz"
        np.savez(path, x=x[keep], y=y[keep])
        args = (child, str(path), config.to_json(), env, os.getpid())  # the config as JSON across processes
        proc = ctx.Process(target=_probe_child, args=args, daemon=True)
        proc.start()
        child.close()
        try:
            kind, value = parent.recv()
        except EOFError:
            raise WorkerError(f"speed probe died with exit code {proc.join(5) or proc.exitcode}") from None
        except BaseException:  # Ctrl-C: the probe (which ignores SIGINT, as trainers do) is of no use now
            proc.kill()
            raise
        finally:
            proc.join(timeout=30)
    if kind != "done":
        raise WorkerError(f"speed probe failed: {value}")
    return float(value)
