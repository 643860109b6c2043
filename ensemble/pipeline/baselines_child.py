"""The baselines alongside the CNN search: one ``ensemble baselines`` child process, pinned and niced.

The CNN study trains in the pipeline's process on every core; the baselines run meanwhile in one child
(``ensemble baselines --jobs N``) pinned to the last N cores at a lower priority, so they use what the
CNN leaves. The child stops starting trials at the search deadline and is killed if it runs on past it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ensemble.search.artifacts import baseline_study
from ensemble.search.devices import VISIBLE_ENV, free_gpu
from ensemble.search.storage import STORAGE_ENV

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.pipeline.presets import Preset
    from ensemble.pipeline.state import Log


KILL_GRACE_S = 30.0  # a baselines child still running this long after the search deadline is stopped


# ---------------------------------------------------------------- baselines in a child process
def baseline_plan(run: Run, s: Preset, storage_url: str | None) -> dict[int, list[str]]:
    """Families grouped by how many search trials each still needs (0: only its refit may be missing)."""
    import optuna

    from ensemble.search.baselines.spaces import parse_models
    from ensemble.search.storage import open_storage, was_killed

    families = parse_models(s.baselines) if s.baselines else []
    storage = open_storage(run, storage_url)
    names = set(optuna.get_all_study_names(storage=storage))
    plan: dict[int, list[str]] = {}
    for fam in families:
        done = 0
        if baseline_study(fam) in names:
            study = optuna.load_study(study_name=baseline_study(fam), storage=storage)
            ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
            trials = study.get_trials(deepcopy=False, states=ended)
            done = sum(t.user_attrs.get("stage", "search") == "search" and not was_killed(t) for t in trials)
        plan.setdefault(max(0, s.baseline_trials - done), []).append(fam)
    return plan


AUTO_KEEP = 4  # cores "auto" leaves to the CNN trainers (their Python, compiling, feeding the GPU)


def baseline_cores(wanted: int | str) -> list[int]:
    """The last ``wanted`` cores, leaving at least one core to the CNN (one core: that core, shared).

    ``"auto"``: all cores but ``AUTO_KEEP`` (at least one), for a machine whose CNNs train on a GPU.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cores = list(range(os.cpu_count() or 1))
    want = len(cores) - AUTO_KEEP if wanted == "auto" else int(wanted)
    n = max(1, min(want, len(cores) - 1))
    return cores[-n:]


def baselines_gpu_env(devices: str) -> dict[str, str]:
    """The baselines child's GPU: one that the CNN trainers leave free (``CUDA_VISIBLE_DEVICES``), when there is
    one; else nothing changes, and XGBoost on CUDA shares a GPU with the trainers."""
    free = free_gpu(devices)
    return {VISIBLE_ENV: free} if free is not None else {}


def _child_setup(nice: int, cores: list[int]) -> None:
    """In the child: lower priority, pinned to ``cores``, dies with the parent."""
    try:
        os.nice(nice)
        os.sched_setaffinity(0, set(cores))
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BaselineWorker(threading.Thread):
    """Runs ``ensemble baselines`` child processes one group at a time, forwarding their output."""

    def __init__(
        self, run: Run, s: Preset, deadline: float, log: Callable[[str], None], storage_url: str | None
    ) -> None:
        super().__init__(daemon=True)
        self.run_, self.s, self.deadline, self.log, self.storage_url = run, s, deadline, log, storage_url
        self.proc: subprocess.Popen | None = None
        self.ok, self.stopped, self.errors = True, False, []
        self.cores = baseline_cores(s.baseline_cores)
        self.gpu_env = baselines_gpu_env(s.devices)
        if self.gpu_env:
            log(f"XGBoost may use gpu:{self.gpu_env[VISIBLE_ENV]}, a GPU without CNN trainers")
        self.on_done: Callable[[], None] | None = None

    def command(self, families: list[str], trials: int) -> list[str]:
        left = max(1, int(0.6 * (self.deadline - time.time())))  # leave time for the refits of the best
        cmd = [sys.executable, "-m", "ensemble", "baselines", "--run", self.run_.name, "--models", ",".join(families)]
        jobs = str(len(self.cores))
        cmd += ["--trials", str(trials), "--jobs", jobs, "--timeout", f"{left}s", "--seed", str(self.s.seed)]
        return cmd  # the storage URL goes in the environment (STORAGE_ENV), never in argv: it may hold a password

    def run(self) -> None:
        for trials, families in sorted(baseline_plan(self.run_, self.s, self.storage_url).items(), reverse=True):
            if self.stopped:
                return
            cmd = self.command(families, trials)
            where = f"core {self.cores[0]}" if len(self.cores) == 1 else f"cores {self.cores[0]}-{self.cores[-1]}"
            self.log(f"{' '.join(cmd[3:])} (nice +{self.s.baseline_nice}, {where})")
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **self.gpu_env}
            env.pop(STORAGE_ENV, None)
            if self.storage_url:
                env[STORAGE_ENV] = self.storage_url
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: _child_setup(int(self.s.baseline_nice), self.cores),
            )
            for line in self.proc.stdout or []:
                if line.strip() and not line.startswith(("Optuna dashboard", "inspect:")) and "━" not in line:
                    self.log(line.rstrip())
            if self.proc.wait() != 0 and not self.stopped:
                self.ok = False
                self.errors.append(f"exit code {self.proc.returncode} for {','.join(families)}")
        if self.ok and not self.stopped and self.on_done is not None:
            self.on_done()  # recorded at once: a later kill during the CNN search does not redo them

    def stop(self, *, interrupt: bool = False) -> None:
        """Stop the child: SIGTERM, or (``interrupt``: Ctrl-C) SIGINT, so it tags the trials it stops as
        interrupted and queues them again, waiting ``KILL_GRACE_S`` for that before SIGTERM."""
        self.stopped = True
        if self.proc is None or self.proc.poll() is not None:
            return
        if interrupt:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(KILL_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.proc.pid, signal.SIGTERM)


def wait_for(worker: BaselineWorker, kill_at: float, log: Log) -> None:
    if worker.is_alive():
        log("search", "CNN search done; waiting for the baselines to finish their refits")
    while worker.is_alive():
        worker.join(timeout=1.0)
        if time.time() > kill_at and worker.is_alive():
            log("baselines", "time share used up: stopping the baselines (finished trials are kept)")
            worker.stop()
            worker.join(timeout=30)
            return
