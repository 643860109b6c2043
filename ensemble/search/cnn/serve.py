"""Inside a trainer process (see :mod:`ensemble.search.cnn.pool`): import Keras and load the search arrays
once, then train the trials the search sends, streaming each epoch's logs back and answering its prune
requests.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.errors import one_line
from ensemble.search.cnn.config import CnnConfig, ConfigValue
from ensemble.search.cnn.memory import release
from ensemble.search.cnn.trainer import ARRAYS, FitOutcome, OnEpoch, PruneRequested, die_with_parent, train_and_save
from ensemble.search.devices import VISIBLE_ENV

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

Arrays = dict[str, np.ndarray]  # the trainer's arrays by name (ARRAYS)


def rss_mb() -> float:
    """This process's resident set size in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def serve(conn: Connection, arrays_path: str, env: dict[str, str], parent: int) -> None:
    """The trainer process: import Keras, load the arrays, then train the trials it is sent until told to exit."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the search decides
    os.environ.update(env)
    try:
        with np.load(arrays_path) as npz:
            arrays = {k: npz[k] for k in ARRAYS if k in npz.files}  # a refit's: x_train and y_train only
        import keras  # noqa: F401  (the backend loads once per trainer, before the first trial)

        # TensorFlow warns that prediction functions are "retraced" when a process builds many models:
        # a trainer does that on purpose (a new model per trial), so the warning is noise here
        logging.getLogger("tensorflow").setLevel(logging.ERROR)

        conn.send(("ready", os.getpid()))
        while True:
            msg = conn.recv()
            if msg[0] == "probe":
                _probe(conn, arrays, *msg[1:])
            elif msg[0] in ("trial", "fit"):
                _one_trial(conn, arrays, *msg[1:], fit_only=msg[0] == "fit")
            else:
                return
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the search went away
        pass
    except BaseException as exc:  # Ctrl-C, or the arrays could not be read: this trainer ends
        try:
            conn.send(("error", one_line(exc, 300, typed=True), rss_mb()))
        except OSError:
            pass
    finally:
        conn.close()


def _one_trial(
    conn: Connection,
    arrays: Arrays,
    config: dict[str, ConfigValue],
    folder: str,
    seed: int,
    *,
    fit_only: bool = False,
) -> None:
    """Train a trial and save its files; ``fit_only``: fit on all of ``x_train`` and save the model at ``folder``."""

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        conn.send(("epoch", epoch, logs))
        if conn.recv() == "prune":
            raise PruneRequested(epoch)

    try:
        c = CnnConfig.from_json(config)  # sent as JSON (:meth:`CnnConfig.to_json`)
        if fit_only:
            result = _fit(arrays, c, Path(folder), seed, on_epoch)
        else:
            result = train_and_save(c, arrays, Path(folder), seed=seed, on_epoch=on_epoch, release=False)
        pinned = {"cuda_visible_devices": os.environ[VISIBLE_ENV]} if VISIBLE_ENV in os.environ else {}
        conn.send(("done", {**result, "trainer_pid": os.getpid(), **pinned}, rss_mb()))
    except PruneRequested as p:
        conn.send(("pruned", p.args[0], rss_mb()))
    except Exception as exc:  # NaN loss, out of memory, a bad combination: this trial fails
        conn.send(("error", one_line(exc, 300, typed=True), rss_mb()))
    finally:
        release()  # after the answer: the search records the trial while this trainer tidies up


def _fit(arrays: Arrays, config: CnnConfig, out: Path, seed: int, on_epoch: OnEpoch) -> FitOutcome:
    """A refit: ``config`` trained on every row of ``x_train``, saved for prediction at ``out``."""
    from ensemble.search.cnn import model as cnn
    from ensemble.search.cnn.simplify import save_for_inference

    t0 = time.perf_counter()
    model, info = cnn.fit_model(config, arrays["x_train"], arrays["y_train"], seed=seed, on_epoch=on_epoch)
    save_for_inference(model, out)
    return {"epochs_run": info["epochs_run"], "seconds": round(time.perf_counter() - t0, 1)}


def _probe(conn: Connection, arrays: Arrays, config: dict[str, ConfigValue], images: int) -> None:
    """The speed probe (:func:`ensemble.search.cnn.trainer.probe_fit`) on ``images`` rows of ``x_train``."""
    from ensemble.search.cnn.trainer import probe_fit

    try:
        speed = probe_fit(CnnConfig.from_json(config), arrays["x_train"], arrays["y_train"], images=images)
        conn.send(("done", speed, rss_mb()))
    except Exception as exc:
        conn.send(("error", one_line(exc, 300, typed=True), rss_mb()))
    finally:
        release()
