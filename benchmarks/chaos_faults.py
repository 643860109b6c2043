"""The faults of ``benchmarks/chaos.py``: launching ``ensemble run``, reaching a stage, delivering a fault."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGETS = ("baselines", "cnn", "build", "report", "refit")
ORDER = (*TARGETS, "refit-report")
STAGE_OF = {"baselines": "baselines", "cnn": "cnn_search", "build": "build", "report": "report", "refit": "refit"}
STAGE_OF["refit-report"] = "refit"
MARKERS = {  # a log line that shows the stage is at work
    "baselines": re.compile(r"\[\d\d:\d\d baselines\] (\S+ +trial|.*baselines --run)"),
    "cnn": re.compile(r"\[\d\d:\d\d cnn\] +trial \d+"),
    "build": re.compile(r"\[\d\d:\d\d build\]"),
    "report": re.compile(r"\[\d\d:\d\d build\] (ensemble of|ensemble already built|no ensemble)"),
    "refit": re.compile(r"\[\d\d:\d\d refit\] refit \S+: "),
    "refit-report": re.compile(r"\[\d\d:\d\d refit\] refitted \d+ CNN member"),  # refit_stage's finished line
}
KINDS = ("kill", "sigint", "stop", "pgrestart", "refit-report")
KIND_TARGETS = {  # what each kind is shared out over (Ctrl-C: a CNN trial first)
    "kill": TARGETS,
    "sigint": ("cnn", "baselines", "build", "report", "refit"),
    "stop": ("cnn",),
    "pgrestart": ("cnn",),
    "refit-report": ("refit-report",),
}
ENDS_RUN = ("kill", "sigint", "refit-report")  # the others leave the run going on
SIGINT_WAIT_S = 120.0  # a run still alive this long after Ctrl-C is SIGKILLed (and the fault says so)


class Launch:
    """One ``ensemble run`` invocation in its own process group, its output read line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, tag: str) -> None:
        self.proc = subprocess.Popen(
            cmd, env={**env, "CHAOS_TAG": tag}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.tag, self.pos = tag, 0  # pos: the first line the next wait_for looks at
        self.faults: list[dict] = []  # the faults it lived through (SIGSTOP, a database restart)
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.log = log.open("a")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or []:
            self.log.write(line)
            self.log.flush()  # the log can be followed while the run goes on
            with self.seen:
                self.lines.append(line.rstrip())
                self.seen.notify_all()
        self.log.close()
        with self.seen:
            self.seen.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Until a line after the last match matches (True), or the process ended, ``give_up()`` or time ran out."""
        end = time.time() + timeout
        with self.seen:
            while time.time() < end:
                while self.pos < len(self.lines):
                    self.pos += 1
                    if pattern.search(self.lines[self.pos - 1]):
                        return True
                if (self.proc.poll() is not None and self.pos >= len(self.lines)) or give_up():
                    return False
                self.seen.wait(0.2)
        return False

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()


def tagged_processes(tag: str) -> list[int]:
    """Pids whose environment carries ``CHAOS_TAG=tag`` (every descendant of a launch inherits it)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"CHAOS_TAG={tag}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def orphans_after_kill(tag: str, grace: float = 10.0) -> list[int]:
    """Processes of a killed launch still alive after ``grace`` seconds (then killed, so the run can go on)."""
    end = time.time() + grace
    while time.time() < end and tagged_processes(tag):
        time.sleep(0.2)
    left = tagged_processes(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def stages_done(root: Path) -> set[str]:
    try:
        data = json.loads((root / "stages.json").read_text())
    except (OSError, ValueError):
        return set()
    return {k for k, v in data.get("stages", {}).items() if v.get("done")}


# ---------------------------------------------------------------- the faults
def parse_faults(text: str, kills: int) -> dict[str, int]:
    """``kill:10,sigint:2,stop`` -> {kind: count}; a kind without a count: ``kills`` for kill, else 1."""
    counts: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, _, n = part.partition(":")
        if kind not in KINDS or (n and not n.isdigit()):
            raise ValueError(f"--faults: '{part}' is not KIND[:COUNT] with KIND one of {', '.join(KINDS)}")
        counts[kind] = int(n) if n else (kills if kind == "kill" else 1)
    return counts


def fault_plan(counts: dict[str, int]) -> list[tuple[str, str]]:
    """(kind, target) per fault, stage by stage in the pipeline's order; each kind shares its out over its targets."""
    plan = [(kind, KIND_TARGETS[kind][i % len(KIND_TARGETS[kind])]) for kind, n in counts.items() for i in range(n)]
    return sorted(plan, key=lambda f: ORDER.index(f[1]))


def next_target(kind: str, planned: str, done: set[str]) -> str | None:
    """The planned target, or the next one in the pipeline's order whose stage is not finished yet."""
    if kind == "refit-report":
        return planned if "refit" not in done else None
    return next((t for t in TARGETS[TARGETS.index(planned) :] if STAGE_OF[t] not in done), None)


@dataclasses.dataclass
class Chaos:
    """The run under test, launched again after each fault that ends it, until it finishes."""

    cmd: list[str]
    env: dict[str, str]
    root: Path
    log: Path
    rng: random.Random
    win: dict[str, float]
    server: Any = None  # pgserver.Server with --storage postgres
    skip: frozenset[str] = frozenset()  # stages the run has no work in (no baselines): never a target
    stop_s: float = 0.0
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    orphans: list[int] = dataclasses.field(default_factory=list)
    launches: int = 0

    def launch(self) -> Launch:
        self.launches += 1
        return Launch(self.cmd, self.env, self.log, f"chaos-{os.getpid()}-{self.launches}")

    def run(self, plan: list[tuple[str, str]]) -> None:
        launch: Launch | None = None
        try:
            for k, (kind, planned) in enumerate(plan, 1):
                rec: dict[str, Any] = {"n": k, "kind": kind, "target": planned, "delivered": False}
                self.records.append(rec)
                launch, reached = self._reach(kind, planned, launch, rec)
                if reached:
                    launch = self._deliver(kind, launch, rec, len(plan))
            self._finish(launch)
        except BaseException:
            if launch is not None and launch.proc.poll() is None:
                launch.signal(signal.SIGCONT)
                launch.kill()
            raise

    def _reach(self, kind: str, planned: str, launch: Launch | None, rec: dict) -> tuple[Any, bool]:
        """(a live launch whose target is at work, True), or (the launch, False): the target stage has finished."""
        t0 = time.time()
        while time.time() - t0 < 1800:
            target = rec["target"] = next_target(kind, planned, stages_done(self.root) | self.skip)
            if target is None:
                rec["outcome"] = "not delivered: the stage had finished"
                return launch, False
            if launch is None or launch.proc.poll() is not None:
                if launch is not None:
                    self._ended(launch)
                launch = self.launch()
            give_up = functools.partial(self._stage_done, None if kind == "refit-report" else STAGE_OF[target])
            if launch.wait_for(MARKERS[target], timeout=600, give_up=give_up):
                return launch, True
        raise SystemExit(f"fault {rec['n']} ({kind}): the run never reached {planned}; see {self.log}")

    def _stage_done(self, stage: str | None) -> bool:
        return stage is not None and stage in stages_done(self.root)

    def _deliver(self, kind: str, launch: Launch, rec: dict, n: int) -> Launch | None:
        """Wait a seeded moment, deliver the fault; the launch if it lives on, None if the fault ended it."""
        target = rec["target"]
        rec["delay"] = 0.0 if kind == "refit-report" else self.rng.uniform(0.0, max(0.3, self.win[target]))
        time.sleep(rec["delay"])
        if launch.proc.poll() is not None:
            rec["outcome"] = "not delivered: the run ended before it"
            return launch
        rec["last"] = launch.lines[-1][:90] if launch.lines else ""
        rec["outcome"] = getattr(self, "_" + kind.replace("-", "_"))(launch)
        rec["delivered"] = True
        print(f"{kind:<12} {rec['n']:>2}/{n}: {target:<12} +{rec['delay']:5.1f}s  {rec['outcome']}", flush=True)
        print(f"{'':<20}last line: {rec['last']}", flush=True)
        if kind in ENDS_RUN:
            self.orphans += orphans_after_kill(launch.tag)
            for r in launch.faults:
                r.setdefault("after", "the run went on (until a later fault ended it)")
            return None
        launch.faults.append(rec)
        return launch

    def _kill(self, launch: Launch) -> str:
        launch.kill()
        return "SIGKILL"

    _refit_report = _kill  # the refit's finished line seen: SIGKILL before the report that follows it

    def _sigint(self, launch: Launch) -> str:
        t0 = time.time()
        launch.signal(signal.SIGINT)
        try:
            rc = launch.proc.wait(SIGINT_WAIT_S)
        except subprocess.TimeoutExpired:
            launch.kill()
            return f"SIGINT: still running {SIGINT_WAIT_S:.0f}s later, SIGKILLed"
        return f"SIGINT: exited {rc} in {time.time() - t0:.1f}s"

    def _stop(self, launch: Launch) -> str:
        launch.signal(signal.SIGSTOP)
        time.sleep(self.stop_s)
        try:
            failed = fail_stale_cnn_trials(self.server.url)
        finally:
            launch.signal(signal.SIGCONT)
        return f"SIGSTOP {self.stop_s:.0f}s, then SIGCONT; meanwhile stale trials failed: {failed or 'none'}"

    def _pgrestart(self, launch: Launch) -> str:
        return f"pg_ctl restart -m fast ({self.server.restart():.1f}s)"

    def _ended(self, launch: Launch) -> None:
        """A launch that exited by itself: 0 is the run finished; else it died after a fault it lived through."""
        rc = launch.proc.wait()
        self.orphans += orphans_after_kill(launch.tag)
        if rc == 0:
            for r in launch.faults:
                r.setdefault("after", "the run went on to the end")
            return
        if not launch.faults:
            raise SystemExit(f"the run exited {rc} with no fault delivered to it; see {self.log}")
        for r in launch.faults[:-1]:
            r.setdefault("after", "the run went on")
        last = launch.lines[-1][:90] if launch.lines else ""
        launch.faults[-1]["after"] = f"the run died later (exit {rc}), resumed; its last line: {last}"

    def _finish(self, launch: Launch | None) -> None:
        """Let the run finish, resumed once more if a fault it lived through made it die."""
        while True:
            launch = launch or self.launch()
            launch.proc.wait()
            self._ended(launch)  # raises when the run failed with no fault to blame
            if launch.proc.returncode == 0:
                return
            launch = None


def fail_stale_cnn_trials(url: str) -> list[int]:
    """Play another live worker while the run is stopped: fail the CNN study's trials whose heartbeat is stale.

    Optuna's ``fail_stale_trials`` on the product's heartbeat storage (which queues a failed trial again),
    as a live worker does before each trial; returns the trial numbers it failed.
    """
    import optuna

    from ensemble.search.scoped import scoped
    from ensemble.search.storage import connect

    running = optuna.trial.TrialState.RUNNING
    try:
        study = optuna.load_study(study_name="cnn", storage=scoped(connect(url, heartbeat=True), "chaos"))
    except KeyError:
        return []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return sorted(before - {t.number for t in study.get_trials(deepcopy=False, states=(running,))})
