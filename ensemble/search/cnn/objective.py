"""One CNN trial, as Optuna calls it: sample a config, train it (in a trainer process), record its figures.

A failure inside the trial (NaN loss, out of memory, a trainer that died) fails only that trial
(``TrialFailed``); a usage or data error, or Ctrl-C, stops the search (Ctrl-C: the trial runs again later).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from ensemble.errors import EnsembleError, TrialError, one_line
from ensemble.search.artifacts import CNN_STUDY, trial_path, upload_trial
from ensemble.search.cnn import model as cnn
from ensemble.search.cnn.arrays import search_arrays
from ensemble.search.cnn.config import CnnConfig
from ensemble.search.cnn.limits import RECYCLE_AFTER
from ensemble.search.cnn.measure import curve_png, overhead, recent_speed
from ensemble.search.cnn.parallel import Meter
from ensemble.search.cnn.pool import Trainer, TrainerPool
from ensemble.search.cnn.takeover import TrialTakenOver
from ensemble.search.cnn.trainer import TrialMetrics, partial_dir, train_and_save
from ensemble.search.devices import CPU
from ensemble.search.interrupt import interrupted
from ensemble.search.spaces import Space
from ensemble.search.storage import mark_owner

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run


class TrialFailed(TrialError):
    """A trial that failed on its own (NaN loss, out of memory, a bad combination)."""


@dataclass(frozen=True)
class SearchSettings:
    """What ``ensemble search`` was asked to do."""

    trials: int = 10
    timeout: float | None = None
    pruner: str = "median"
    seed: int = 0
    sampler_seed: int | None = None  # the sampler's own seed (ensemble worker: its own); None: ``seed``
    max_train: int | None = None  # subsample the train part during search (None: all rows)
    mixed_precision: bool = False  # float16 compute (useful on GPUs), float32 output layer
    isolate: bool = True  # train trials in trainer processes, recycled every recycle_after trials (bounded memory)
    recycle_after: int = RECYCLE_AFTER
    jobs: int | str = 1  # trials at once per device, each in its own trainer process; "auto": ramped up
    devices: str = "all"  # all, cpu or GPU ids such as "0,1" (ensemble.search.devices): one trainer slot on each
    # every trial trains this many epochs (the budget's plan, read as each trial starts), whatever the space says
    epochs: int | Callable[[], int] | None = None


def make_objective(
    run: Run,
    space: Space,
    settings: SearchSettings,
    say: Callable[[str], None],
    pool: TrainerPool | None = None,
    meter: Meter | None = None,
    stopping: threading.Event | None = None,
) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls once per trial (training in one of ``pool``'s trainer processes when given).

    ``stopping``: set on Ctrl-C (:func:`ensemble.search.interrupt.on_interrupt`); a trial that ends while it
    is set, or by KeyboardInterrupt, is tagged interrupted and queued again, and raises ``Interrupted``.
    """
    train_one = _trial_function(run, space, settings, say, pool, meter)

    def objective(trial: optuna.Trial) -> float:
        try:
            return train_one(trial)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt) and (stopping is None or not stopping.is_set()):
                raise
            discard(trial_path(run, CNN_STUDY, trial.number))
            say(f"  trial {trial.number} interrupted")
            raise interrupted(trial) from None

    return objective


def _trial_function(
    run: Run,
    space: Space,
    settings: SearchSettings,
    say: Callable[[str], None],
    pool: TrainerPool | None,
    meter: Meter | None,
) -> Callable[[optuna.Trial], float]:
    """One trial: sample, train, record (what :func:`make_objective` wraps)."""
    import optuna

    arrays = search_arrays(run, max_train=settings.max_train, seed=settings.seed)
    n_train = len(arrays["y_train"])
    backend = cnn.backend_name()
    device = cnn.device_name() if pool is None else CPU  # with a pool: each trainer's own device

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except optuna.exceptions.UpdateFinishedTrialError as exc:  # another process failed it: we were paused
            discard(trial_path(run, CNN_STUDY, trial.number))
            raise TrialTakenOver(trial.number) from exc

    def run_trial(trial: optuna.Trial) -> float:
        mark_owner(trial, run.root)
        config = _trial_config(trial, space, settings)
        started = time.perf_counter()
        ends: list[float] = []  # when each epoch ended: the trial's speed at its end, for the budget's plan
        curve: list[float] = []  # validation accuracy per epoch: the trial's learning-curve picture

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            ends.append(time.perf_counter())
            if meter is not None:
                meter.add(n_train)
            curve.append(float(logs["val_accuracy"]))
            trial.report(logs["val_accuracy"], epoch)
            say(f"  trial {trial.number} epoch {epoch}: val_accuracy {logs['val_accuracy']:.4f}")
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        folder = trial_path(run, CNN_STUDY, trial.number)
        seed = settings.seed + trial.number
        with _lease(pool) as trainer:
            where = trainer.device.label if trainer is not None else device
            trial.set_user_attr("device", where)  # a failed trial too: where it ran
            say(f"trial {trial.number}: {backend}/{where}, {_short(config)}")
            metrics = _train(trial, config, folder, seed, on_epoch, arrays if trainer is None else trainer, say)
        curve_png(folder / "learning_curve.png", curve, trial.number)
        attrs = {
            **metrics,
            "backend": backend,
            "device": where,
            "n_train": n_train,
            **recent_speed(ends, n_train),
            **overhead(started, ends, metrics["train_seconds"]),
            "artifact_dir": str(folder),
            "data_fingerprint": run.dataset.fingerprint,
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        upload_trial(trial, folder)  # to the artifact store, when the run has one (the dashboard previews the PNG)
        say(
            f"  trial {trial.number} done: val_accuracy {metrics['val_accuracy']:.4f}, "
            f"{metrics['train_seconds']:.0f}s, {metrics['params']:,} params"
        )
        return metrics["val_accuracy"]

    return objective


def _trial_config(trial: optuna.Trial, space: Space, settings: SearchSettings) -> CnnConfig:
    """The trial's CNN config: sampled from the space, with the settings' precision and planned epochs."""
    config = CnnConfig.from_json(space.suggest(trial), where=str(space.path))
    config = config.replace(mixed_precision=config.mixed_precision or settings.mixed_precision)
    planned = settings.epochs() if callable(settings.epochs) else settings.epochs
    if planned:
        config = config.replace(epochs=int(planned))
    trial.set_user_attr("epochs", config.epochs)  # what the deadline pruner projects with
    return config


@contextmanager
def _lease(pool: TrainerPool | None) -> Iterator[Trainer | None]:
    """A trainer of ``pool`` for one trial (None without a pool: the trial trains in this process)."""
    if pool is None:
        yield None
        return
    with pool.lease() as trainer:
        yield trainer


def _train(
    trial: optuna.Trial,
    config: CnnConfig,
    folder: Path,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None],
    where: Trainer | dict[str, np.ndarray],
    say: Callable[[str], None],
) -> TrialMetrics:
    """Train the trial in the trainer ``where`` (or here, on ``where``'s arrays); a failure fails only this trial."""
    import optuna

    try:
        if isinstance(where, Trainer):
            return where.train(config, folder, seed=seed, on_epoch=on_epoch)
        return train_and_save(config, where, folder, seed=seed, on_epoch=on_epoch)
    except optuna.TrialPruned as exc:
        discard(folder)
        say(f"  trial {trial.number} {exc or 'pruned'}")
        raise
    except optuna.exceptions.UpdateFinishedTrialError:  # failed by another process (takeover.py): not our failure
        discard(folder)
        raise
    except (EnsembleError, KeyboardInterrupt) as exc:
        if not isinstance(exc, TrialError):  # a usage or data error, or Ctrl-C: stop the search
            discard(folder)
            raise
        _fail(trial, folder, exc, say)
    except Exception as exc:  # NaN loss, OOM, a bad combination: this trial fails, the study goes on
        _fail(trial, folder, exc, say)


def _fail(trial: optuna.Trial, folder: Path, exc: BaseException, say: Callable[[str], None]) -> NoReturn:
    """This trial failed on its own (its worker's error, NaN loss, OOM, ...): record why; the study goes on."""
    discard(folder)
    reason = str(exc) if isinstance(exc, TrialError) else one_line(exc, typed=True)
    trial.set_user_attr("fail_reason", reason)
    say(f"  trial {trial.number} FAILED: {reason}")
    raise TrialFailed(reason) from exc


def discard(folder: Path) -> None:
    """Remove a trial's folder and its partial (in-progress) copy."""
    shutil.rmtree(partial_dir(folder), ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _short(config: CnnConfig) -> str:
    keys = ("conv_blocks", "filters", "kernel_size", "optimizer", "learning_rate", "batch_size", "epochs")
    values = {k: getattr(config, k) for k in keys}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
