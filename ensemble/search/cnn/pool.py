"""Long-lived trainer processes: each trains many trials, one at a time, and is recycled now and then.

TensorFlow keeps ~22 MiB per trained model in process-wide caches that ``clear_session`` does not
release (``benchmarks/search_memory.py``), so trials do not train in the search process. A trainer
is a spawned process that imports Keras and loads the search arrays once, then trains the trials
the search sends it: it streams each epoch's logs back (the search reports them to Optuna and
answers whether to prune) and saves the trial's files. A trainer is replaced by a fresh one

- after ``recycle_after`` trials, or when its memory (RSS) passes ``max_rss_mb`` after a trial;
- after a trial that failed inside it (its state may be bad: a GPU out of memory, a NaN);
- when it dies (killed, out of memory): only the trial it was training fails.

A :class:`TrainerPool` holds one trainer per trial that runs at the same time (Optuna's ``n_jobs``):
``per_device`` trainers on each device of the search (:mod:`ensemble.search.devices`). Each trainer is
pinned to its device (``CUDA_VISIBLE_DEVICES`` set in the process before it imports the backend), a
trial leases a free trainer on the least busy device, and a trainer that dies is replaced on the same
device. Each trainer caps its share of its GPU's memory (JAX: no preallocation,
``XLA_PYTHON_CLIENT_MEM_FRACTION``; TensorFlow: memory growth), and under JAX compiled programs are kept
in a disk cache that trainers share, so a trainer that starts later, or a trial whose model has the
same shapes, skips the compile.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ensemble.search.cnn.config import CnnConfig
from ensemble.search.cnn.limits import TrainerLimits, trainer_env
from ensemble.search.cnn.serve import serve
from ensemble.search.cnn.trainer import FitOutcome, OnEpoch, TrialMetrics, WorkerError
from ensemble.search.devices import CPU, Device

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess


class Trainer:
    """One trainer process at a time, started when needed and replaced as :class:`TrainerLimits` say."""

    def __init__(self, arrays_path: Path, limits: TrainerLimits, device: Device | None = None) -> None:
        self.arrays_path, self.limits = arrays_path, limits
        self.device = device or Device(CPU, None)
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.trials = 0  # trials the current process has trained
        self.starts = 0  # processes started so far
        self.ready = False
        self.retiring: list[tuple[BaseProcess, threading.Thread]] = []  # retired processes that may still be exiting

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        """Spawn the process (when none is running); :meth:`wait_ready` waits for its imports and data."""
        if self.proc is not None:
            return
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (child, str(self.arrays_path), trainer_env(self.limits, self.device), os.getpid())
        self.proc = ctx.Process(target=serve, args=args, daemon=True)
        self.proc.start()
        child.close()
        self.trials, self.ready = 0, False
        self.starts += 1

    def wait_ready(self) -> None:
        self.start()
        if not self.ready:
            msg = self._recv()
            if msg[0] != "ready":
                self.close()
                raise WorkerError(msg[1])
            self.ready = True

    @overload
    def train(
        self, config: CnnConfig, folder: Path, *, seed: int, on_epoch: OnEpoch, job: Literal["trial"] = "trial"
    ) -> TrialMetrics: ...

    @overload
    def train(
        self, config: CnnConfig, folder: Path, *, seed: int, on_epoch: OnEpoch, job: Literal["fit"]
    ) -> FitOutcome: ...

    def train(
        self, config: CnnConfig, folder: Path, *, seed: int, on_epoch: OnEpoch, job: Literal["trial", "fit"] = "trial"
    ) -> TrialMetrics | FitOutcome:
        """Train one trial (see :func:`ensemble.search.cnn.trainer.train_and_save`); ``on_epoch`` may raise to prune.

        ``job="fit"``: fit ``config`` on all the trainer's ``x_train`` and save the model for prediction at
        ``folder`` (a ``.keras`` file): a refit on every labeled digit.
        """
        try:
            self.wait_ready()
            self._send((job, config.to_json(), str(folder), seed))  # the config as JSON across processes
            kind, value, rss, pending = self._exchange(on_epoch)
        except WorkerError:
            self.close()
            raise
        except BaseException:  # Ctrl-C or an error of the search: the trainer may be mid-epoch
            self.kill()
            raise
        if kind == "error":
            self.close()  # a fresh process for the next trial
            raise WorkerError(value)
        self.trials += 1
        if self.trials >= self.limits.recycle_after or rss > self.limits.max_rss_mb:
            self.close()
        if kind == "pruned":
            raise pending if pending is not None else WorkerError("pruned without a request")
        return value

    def probe(self, config: CnnConfig, images: int) -> float:
        """The speed probe (training images/s of ``config``) as a job of this trainer, which stays warm after it."""
        try:
            self.wait_ready()
            self._send(("probe", config.to_json(), images))
            msg = self._recv()
        except WorkerError:
            self.close()
            raise
        except BaseException:  # Ctrl-C: the probe is of no use now
            self.kill()
            raise
        if msg[0] != "done":
            self.close()
            raise WorkerError(f"speed probe failed: {msg[1]}")
        return float(msg[1])

    def _exchange(self, on_epoch: OnEpoch) -> tuple[str, Any, float, BaseException | None]:
        """Relay epochs until the trial ends: (kind, result or reason, trainer RSS, the exception that pruned)."""
        pending: BaseException | None = None
        while True:
            msg = self._recv()
            if msg[0] == "epoch":
                answer = "go"
                try:
                    on_epoch(msg[1], msg[2])
                except BaseException as exc:  # the search decided to prune (or was interrupted)
                    pending, answer = exc, "prune"
                self._send(answer)
            elif msg[0] in ("done", "pruned", "error"):
                return msg[0], msg[1], float(msg[2]), pending
            else:
                raise WorkerError(f"unexpected message from the trial worker: {msg[0]!r}")

    def _send(self, msg: object) -> None:
        try:
            self.conn.send(msg)
        except OSError:  # a broken pipe: the process is gone
            self.proc.join(5)
            raise WorkerError(f"trial worker died with exit code {self.proc.exitcode}") from None

    def _recv(self) -> Any:
        while not self.conn.poll(1.0):
            if not self.proc.is_alive():
                raise WorkerError(f"trial worker died with exit code {self.proc.exitcode} (killed for memory?)")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise WorkerError(f"trial worker died with exit code {self.proc.exitcode}") from None

    def close(self) -> None:
        """Retire the process: ask it to exit and let a background thread wait for it (stopped if it lingers).

        The trial that triggered a recycle does not wait for a process to tear down.
        """
        if self.proc is None:
            return
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        try:
            conn.send(("exit",))
        except OSError:
            pass
        reaper = threading.Thread(target=_reap, args=(proc, conn, 30.0), daemon=True, name="trainer-reaper")
        reaper.start()
        self.retiring = [(p, r) for p, r in self.retiring if r.is_alive()] + [(proc, reaper)]

    def kill(self) -> None:
        """Stop the process now (SIGTERM, then SIGKILL): it may be mid-trial, or the search is over.

        Retired processes still exiting are waited for too, so none outlives the search.
        """
        if self.proc is not None:
            _reap(self.proc, self.conn, 0.0)
        self.proc, self.conn, self.ready = None, None, False
        for proc, reaper in self.retiring:
            if proc.is_alive():
                proc.terminate()
            reaper.join()
        self.retiring = []


def _reap(proc: BaseProcess, conn: Connection, grace: float) -> None:
    """Wait ``grace`` seconds for ``proc`` to exit, then terminate it (and kill it if it still lingers)."""
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    conn.close()


class TrainerPool:
    """Trainers for the trials that run at the same time: a trial leases one for its whole training.

    ``per_device`` trainers on each of ``devices`` (default: one, the CPU as it is).
    """

    def __init__(
        self, arrays_path: Path, per_device: int, limits: TrainerLimits, devices: Sequence[Device] | None = None
    ) -> None:
        self.arrays_path, self.limits = arrays_path, limits
        self.devices: tuple[Device, ...] = tuple(devices or (Device(CPU, None),))
        self.trainers: list[Trainer] = []
        self._free: list[Trainer] = []  # the warmest (last returned) at the end
        self._busy = {d.label: 0 for d in self.devices}
        self._cond = threading.Condition()
        self.resize(per_device)

    @property
    def size(self) -> int:
        return len(self.trainers)

    @property
    def per_device(self) -> int:
        return self.size // len(self.devices)

    @property
    def starts(self) -> int:
        """Trainer processes started so far (a fresh one per recycle)."""
        return sum(t.starts for t in self.trainers)

    def resize(self, per_device: int) -> None:
        """Grow to ``per_device`` trainers on each device (a pool never shrinks: an idle trainer costs only memory)."""
        with self._cond:
            while self.per_device < per_device:
                for device in self.devices:
                    trainer = Trainer(self.arrays_path, self.limits, device)
                    self.trainers.append(trainer)
                    self._free.insert(0, trainer)
            self._cond.notify_all()

    def warm(self) -> float:
        """Start every trainer side by side and wait until each is ready; returns the seconds."""
        t0 = time.perf_counter()
        for trainer in self.trainers:
            trainer.start()
        for trainer in self.trainers:
            try:
                trainer.wait_ready()
            except WorkerError:  # it starts again for its first trial, which fails if it cannot
                pass
        return time.perf_counter() - t0

    @contextmanager
    def lease(self) -> Iterator[Trainer]:
        """A free trainer on the least busy device (the warmest there), until the trial is over."""
        with self._cond:
            while not self._free:
                self._cond.wait()
            order = range(len(self._free) - 1, -1, -1)  # the warmest first among equals
            pick = min(order, key=lambda i: (self._busy[self._free[i].device.label], not self._free[i].alive))
            trainer = self._free.pop(pick)
            self._busy[trainer.device.label] += 1
        try:
            yield trainer
        finally:
            with self._cond:
                self._busy[trainer.device.label] -= 1
                self._free.append(trainer)
                self._cond.notify()

    def probe(self, config: CnnConfig, images: int) -> float:
        """The speed probe on ``images`` training rows as the first trainer's first job; that trainer then trains
        the search's first trial, warm (the probe's own process: :func:`.trainer.probe_speed`)."""
        with self.lease() as trainer:
            return trainer.probe(config, images)

    def interrupt(self) -> None:
        """Ctrl-C: SIGKILL every trainer process now, so the trials they train end at once (called from a
        signal handler: nothing here waits; :meth:`close` reaps them)."""
        for trainer in self.trainers:
            proc = trainer.proc
            if proc is not None and proc.pid is not None:
                try:
                    os.kill(proc.pid, 9)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        """The search is over: stop every trainer now (they are between trials; nothing is lost)."""
        for trainer in self.trainers:
            trainer.kill()
