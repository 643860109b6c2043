"""A run's progress: its log lines (Log), the stages done (Stages: stages.json) and its time budget (Budget)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemble.io import read_json, write_json
from ensemble.logs import stage_line


class Log:
    """Timestamped, thread-safe status lines: ``[mm:ss stage] message``.

    They go to the ``ensemble`` logger (:mod:`ensemble.logs`), or to ``say`` when one is given.
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.t0 = time.time()
        self.say = say
        self.lock = threading.Lock()

    def __call__(self, stage: str, msg: str) -> None:
        elapsed = time.time() - self.t0
        with self.lock:
            if self.say is None:
                stage_line(stage, elapsed, msg)
            else:
                m, s = divmod(int(elapsed), 60)
                self.say(f"[{m:02d}:{s:02d} {stage}] {msg}")
            sys.stdout.flush()

    def for_stage(self, stage: str) -> Callable[[str], None]:
        return lambda msg: self(stage, msg.strip())


class Stages:
    """``runs/NAME/stages.json``: which stages finished, when, how long they took.

    Every update re-reads the file under an OS lock (``.stages.lock``) and rewrites it atomically,
    so threads and processes never lose each other's updates.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # flock is per open file: threads of one process need their own lock

    @property
    def data(self) -> dict[str, Any]:
        return read_json(self.path) if self.path.is_file() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("done"))

    def seconds(self, stage: str) -> float | None:
        """How long ``stage`` took when it last finished; None when it never did."""
        seconds = self.data["stages"].get(stage, {}).get("seconds")
        return None if seconds is None else float(seconds)

    def plan(self) -> dict[str, int] | None:
        """The plan an earlier invocation recorded (members, epochs); None before any."""
        return self.data.get("plan")

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        from ensemble.locks import locked

        with self.lock, locked(self.path.with_name(".stages.lock")):
            data = self.data
            change(data)
            write_json(self.path, data)

    def finish(self, stage: str, seconds: float, **info: object) -> None:
        entry = {"done": True, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        self._update(lambda d: d["stages"].__setitem__(stage, entry))

    def note(self, **info: object) -> None:
        self._update(lambda d: d.update(info))


class Budget:
    """Deadlines for the stages still to do, from the global budget and the preset's shares."""

    def __init__(self, seconds: float, shares: dict[str, float], todo: list[str], start: float | None = None) -> None:
        self.start = time.time() if start is None else start
        self.seconds = seconds
        active = {k: v for k, v in shares.items() if k in todo}
        total = sum(active.values()) or 1.0
        self.ends, t = {}, self.start
        for k in ("search", "build", "report"):
            t += seconds * active.get(k, 0.0) / total
            self.ends[k] = t

    def left(self, stage: str) -> float:
        return self.ends[stage] - time.time()

    def describe(self) -> str:
        return ", ".join(f"{k} until {clock(v - self.start)}" for k, v in self.ends.items())


def clock(seconds: float) -> str:
    m, s = divmod(max(0, int(seconds)), 60)
    return f"{m:02d}:{s:02d}"
