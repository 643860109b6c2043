"""The final refit on several devices: one member per device at once, each in a trainer pinned to its device.

With two or more devices (:mod:`ensemble.search.devices`), :func:`ensemble.inference.refit.refit_full` hands its
members here instead of training them one after another in its own process. One thread per device leases a
trainer on that device (:class:`ensemble.search.cnn.pool.TrainerPool`, its arrays every labeled digit) and takes
the next member of the final model, in order, until none is left. A member that would end past the deadline
keeps its pre-refit model, as in the sequential refit; so does one whose trainer died.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.combine.records import MemberRefit
from ensemble.errors import TrialError
from ensemble.search.cnn.config import CnnConfig
from ensemble.search.cnn.limits import TrainerLimits
from ensemble.search.cnn.pool import Trainer, TrainerPool
from ensemble.search.devices import Devices


@dataclass(frozen=True)
class RefitJob:
    """One member to refit: its config, seed and epochs, the time it needs, where its refitted and old models go."""

    name: str
    config: CnnConfig
    seed: int
    epochs: int
    need_seconds: float
    out: Path  # the refitted model, for prediction
    source: Path  # its pre-refit model (kept when there is no time)


def refit_on_devices(
    jobs: list[RefitJob],
    devices: Devices,
    x: np.ndarray,
    y: np.ndarray,
    *,
    deadline: float | None,
    say: Callable[[str], None],
) -> dict[str, MemberRefit]:
    """Refit ``jobs`` on ``x``, ``y``, one per device at once; each member's record (as ``refit_full`` keeps it)."""
    tmp = Path(tempfile.mkdtemp(prefix="ensemble-refit-"))
    np.savez(tmp / "arrays.npz", x_train=x, y_train=y)
    pool = TrainerPool(tmp / "arrays.npz", 1, TrainerLimits(recycle_after=10**6), devices.devices)
    todo, lock = list(jobs), threading.Lock()
    records: dict[str, MemberRefit] = {}

    def next_job() -> RefitJob | None:
        with lock:
            return todo.pop(0) if todo else None

    def device_loop() -> None:
        with pool.lease() as trainer:
            while (job := next_job()) is not None:
                records[job.name] = _refit_one(trainer, job, len(y), deadline, say)

    threads = [threading.Thread(target=device_loop, name="refit") for _ in range(min(len(jobs), pool.size))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: the trainers stop now, so their threads end
        pool.interrupt()
        raise
    finally:
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def _refit_one(
    trainer: Trainer, job: RefitJob, rows: int, deadline: float | None, say: Callable[[str], None]
) -> MemberRefit:
    """Refit ``job`` in ``trainer``; its pre-refit model stays when it would end late or its trainer fails."""
    where = trainer.device.label
    if deadline is not None and time.time() + job.need_seconds > deadline:
        say(f"{job.name}: no time to refit ({job.need_seconds / 60:.1f} min needed): keeps its pre-refit model")
        shutil.copy2(job.source, job.out)
        return MemberRefit(False, reason="no time left in the budget")
    need = f"~{job.need_seconds / 60:.1f} min"
    say(f"refit {job.name} on {where}: {rows:,} labeled digits x {job.epochs} epochs ({need})")

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        say(f"  refit {job.name} epoch {epoch}/{job.epochs}: accuracy {logs.get('accuracy', float('nan')):.4f}")

    t0 = time.perf_counter()
    try:
        trainer.train(job.config, job.out, seed=job.seed, on_epoch=on_epoch, job="fit")
    except TrialError as exc:  # its trainer died or the fit failed: the member keeps its pre-refit model
        say(f"{job.name}: refit on {where} failed ({exc}): keeps its pre-refit model")
        shutil.copy2(job.source, job.out)
        return MemberRefit(False, reason=f"refit failed on {where}: {exc}")
    seconds = round(time.perf_counter() - t0, 1)
    return MemberRefit(True, epochs=job.epochs, rows=rows, seed=job.seed, seconds=seconds, device=where)
