"""Several CNN trials at once: Optuna's ``n_jobs`` threads, each training in its own trainer process.

``jobs`` counts trials per device: with D devices (:mod:`ensemble.search.devices`) the search runs
D x ``jobs`` trials at once, ``jobs`` trainers on each device.

One small CNN does not fill a large GPU: a trial's compile, prediction and saving leave it idle,
and so does a small batch. ``jobs`` trials then run side by side, each in a trainer process of the
pool (:mod:`ensemble.search.cnn.pool`); the TPE sampler's ``constant_liar`` keeps them from
sampling the same region. ``jobs="auto"`` ramps up over the first trials: 1 trial per device, then 2,
then 4, ... (at most ``AUTO_MAX``) while the images trained per second of wall time, all trials of
the round together, grow by at least ``AUTO_GAIN``; the rest of the search runs with the best count.
Trainers are started before each round, so their start-up does not count against a count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ensemble.errors import UsageError

if TYPE_CHECKING:
    import optuna

    from ensemble.search.cnn.pool import TrainerPool

AUTO_GAIN = 1.25  # a round of 2k trials at once must train this much faster than one of k
AUTO_MAX = 8  # trials at once, at most, for "auto"


def parse_jobs(value: object) -> int | str:
    """A positive integer or ``"auto"`` (also from text: ``--set trials_per_device=3``)."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise UsageError(f"trials at once must be a positive integer or 'auto', got {value!r}")


class Meter:
    """Images trained by this process's trials, all threads together (read by the ramp)."""

    def __init__(self) -> None:
        self.images = 0
        self._lock = threading.Lock()

    def add(self, images: int) -> None:
        with self._lock:
            self.images += images


def choose_jobs(rates: dict[int, float], gain: float = AUTO_GAIN) -> int:
    """The count to keep: going from the best so far to a larger count must gain ``gain`` x images/s."""
    best = min(rates)
    for k in sorted(rates):
        if rates[k] >= gain * rates[best]:
            best = k
    return best


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    jobs: int | str,
    pool: TrainerPool | None,
    meter: Meter,
    n_trials: int,
    timeout: float | None,
    say: Callable[[str], None],
    on_jobs: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> int:
    """``study.optimize`` with ``jobs`` trials at once per device (``"auto"``: ramped up); returns the count per
    device it ran with. ``on_jobs`` is told the trials at once on all devices together.

    ``kwargs`` go to ``study.optimize`` (catch, callbacks, gc_after_trial).
    """
    end = None if timeout is None else time.time() + timeout
    devices = len(pool.devices) if pool is not None else 1

    def phase(trials: int, k: int) -> bool:
        """Run ``trials`` trials ``k`` at once per device; False when the search is over (stopped, out of time or
        trials)."""
        left = None if end is None else end - time.time()
        if trials <= 0 or (left is not None and left <= 0):
            return False
        if pool is not None:
            pool.resize(k)
        if on_jobs is not None:
            on_jobs(k * devices)
        study.optimize(objective, n_trials=trials, timeout=left, n_jobs=k * devices, **kwargs)
        return not study._stop_flag and (end is None or time.time() < end)

    jobs = parse_jobs(jobs)
    if jobs != "auto":
        phase(n_trials, int(jobs))
        return int(jobs)
    rates: dict[int, float] = {}
    k, used = 1, 0
    while True:
        if pool is not None:
            pool.resize(k)
            pool.warm()
        images, t0 = meter.images, time.perf_counter()
        going = phase(min(k * devices, n_trials - used), k)
        used += k * devices
        if meter.images > images:
            rates[k] = (meter.images - images) / (time.perf_counter() - t0)
            say(f"{k} trial(s) at once{_per(devices)}: {rates[k]:,.0f} images/s")
        if not going or k >= AUTO_MAX or (k > 1 and k // 2 in rates and rates.get(k, 0.0) < AUTO_GAIN * rates[k // 2]):
            break
        k *= 2
    best = choose_jobs(rates) if rates else 1
    if going:
        measured = ", ".join(f"{j}: {r:,.0f}" for j, r in rates.items())
        say(f"trials at once: {best}{_per(devices)} (auto, from {measured} images/s)")
        phase(n_trials - used, best)
    return best


def _per(devices: int) -> str:
    return f" per device ({devices} devices)" if devices > 1 else ""
