"""Fault injection: SIGKILL ``ensemble run --preset quick`` K times across its stages, then check nothing was lost.

    python benchmarks/chaos.py                                  # demo digits, K=10
    python benchmarks/chaos.py --data ../shared/data/digit-recognizer --rows 6000 --test-rows 2000
    python benchmarks/chaos.py --tiny --kills 2                 # the test suite's version (seconds per stage)

First an unkilled reference run (same seed) is timed. Then the run under test is started, and at each
of K moments the whole process group is SIGKILLed, at a seeded random delay after the targeted
stage starts: the kills are shared out over a baseline trial, a CNN trial, build, report and refit, in
the pipeline's order (K=10: 2 each; a target whose stage already finished moves to the next; the final
refit only happens when the final model has a CNN). Then the run
is left to finish. Checked afterwards (exit 1 if any fails):

- a valid submission (``ensemble submission check`` rules, the test set's row count);
- no trial left RUNNING in any study;
- every COMPLETE trial's artifacts load (CNN: the Keras model in safe mode; baselines: the saved
  model) and its probabilities have the right shape;
- the ensemble manifest verifies (every listed file's sha256);
- no temporary debris (``.partial`` folders, ``*.tmp`` files, ``.ensemble-tmp/old-*``, search arrays);
- the CNN study has the trials it was asked for (killed trials do not count);
- no process of the run outlives a kill (children in other sessions included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import machine_line  # benchmarks/machine.py

TARGETS = ("baselines", "cnn", "build", "report", "refit")
STAGE_OF = {"baselines": "baselines", "cnn": "cnn_search", "build": "build", "report": "report", "refit": "refit"}
MARKERS = {  # a log line that shows the stage is at work
    "baselines": re.compile(r"\[\d\d:\d\d baselines\] (\S+ +trial|.*baselines --run)"),
    "cnn": re.compile(r"\[\d\d:\d\d cnn\] +trial \d+"),
    "build": re.compile(r"\[\d\d:\d\d build\]"),
    "report": re.compile(r"\[\d\d:\d\d build\] (ensemble of|ensemble already built|no ensemble)"),
    "refit": re.compile(r"\[\d\d:\d\d refit\] refit \S+: "),
}
TINY_SPACE = """conv_blocks: 2
filters: {type: categorical, choices: [4, 8]}
kernel_size: 3
batch_norm: false
dense_units: 16
conv_dropout: 0.0
dense_dropout: 0.1
batch_size: 64
epochs: 2
rotation: 0.0
zoom: 0.0
shift: 0.0
"""
FIXED_WINDOWS = {"cnn": 3.0, "baselines": 2.0, "build": 2.0, "report": 1.0, "refit": 2.0}  # --no-reference: seconds


def write_slice(src: Path | None, rows: int, test_rows: int, out: Path) -> Path:
    """The first ``rows`` labeled and ``test_rows`` test digits of ``src`` (or the demo digits) as Kaggle CSVs."""
    from ensemble.data.demo import ensure_demo
    from ensemble.data.load import PIXEL_COLUMNS, TRAIN_COLUMNS, load_dataset

    ds = load_dataset(src if src is not None else ensure_demo())
    out.mkdir(parents=True, exist_ok=True)
    train = [ds.y_train[:rows, None], ds.x_train[:rows].reshape(min(rows, len(ds.y_train)), -1)]
    for name, header, table in (
        ("train", TRAIN_COLUMNS, __import__("numpy").hstack(train)),
        ("test", PIXEL_COLUMNS, ds.x_test[:test_rows].reshape(min(test_rows, len(ds.x_test)), -1)),
    ):
        lines = [",".join(header)] + [",".join(map(str, r)) for r in table.tolist()]
        (out / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return out


class Launch:
    """One ``ensemble run`` invocation in its own process group, its output read line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.log = log.open("a")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or []:
            self.log.write(line)
            with self.seen:
                self.lines.append(line.rstrip())
                self.seen.notify_all()
        with self.seen:
            self.seen.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> bool:
        """Until a line matches (True), or the process ended / timed out (False)."""
        end, i = time.time() + timeout, 0
        with self.seen:
            while time.time() < end:
                while i < len(self.lines):
                    if pattern.search(self.lines[i]):
                        return True
                    i += 1
                if self.proc.poll() is not None and i >= len(self.lines):
                    return False
                self.seen.wait(0.2)
        return False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
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


# ---------------------------------------------------------------- invariants
def _debris(root: Path) -> list[str]:
    found = [*root.rglob("*.partial"), *root.rglob("*.tmp"), *root.glob(".ensemble-tmp-*")]
    found += [*root.glob(".ensemble-old-*"), *root.glob(".ensemble-full-*"), *(root / ".cache").glob("*search-arrays*")]
    found += list((root / ".workers").glob("*.lock"))  # a dead process's token
    return sorted(str(p.relative_to(root)) for p in found)


def _trial_loads(trial: object, study: str, sizes: dict[str, int]) -> str | None:
    import numpy as np

    from ensemble.combine.members import load_keras_model
    from ensemble.search.baselines.saved import load_model

    folder = Path(trial.user_attrs.get("artifact_dir", ""))  # type: ignore[attr-defined]
    try:
        if study == "cnn":
            load_keras_model(folder / "model.keras", folder.name)
        elif study != "baseline-fallback":
            load_model(folder, None)
        for part, n in sizes.items():
            p = np.load(folder / f"proba_{part}.npy")
            if p.shape != (n, 10) or not np.isfinite(p).all():
                return f"{folder}: proba_{part} shape {p.shape}"
    except Exception as exc:  # report any failure to load as a broken invariant
        return f"{folder}: {type(exc).__name__}: {exc}"[:300]
    return None


def check_invariants(root: Path, cnn_trials: int) -> dict[str, str]:
    """Each invariant's name -> "ok" or what broke it."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from ensemble.data.split import load_split
    from ensemble.inference.predict import load_ensemble
    from ensemble.report.submission import check_submission
    from ensemble.search.cnn.study import finished_trials

    out: dict[str, str] = {}
    split = load_split(root / "split.json")
    n_test = int(json.loads((root / "ensemble" / "manifest.json").read_text())["data"]["n_test"])
    sizes = {"val": len(split.val), "holdout": len(split.holdout), "test": n_test}
    try:
        check_submission(root / "submission.csv", n_rows=n_test)
        out["valid submission"] = "ok"
    except Exception as exc:  # an invalid submission is a broken invariant
        out["valid submission"] = str(exc)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    running, broken, cnn = [], [], None
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        running += [f"{name}#{t.number}" for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            broken += [why for why in [_trial_loads(t, name, sizes)] if why]
        cnn = study if name == "cnn" else cnn
    out["no trial left RUNNING"] = "ok" if not running else f"RUNNING: {running}"
    out["every COMPLETE trial's artifacts load"] = "ok" if not broken else "; ".join(broken[:3])
    try:
        load_ensemble(root / "ensemble")
        if (root / "ensemble-full").exists():  # the final refit's ensemble, when the final model had CNNs
            load_ensemble(root / "ensemble-full")
        out["ensemble manifest verifies"] = "ok"
    except Exception as exc:  # a manifest that does not verify is a broken invariant
        out["ensemble manifest verifies"] = str(exc)
    debris = _debris(root)
    out["no temporary debris"] = "ok" if not debris else f"left: {debris[:6]}"
    got = finished_trials(cnn) if cnn is not None else 0
    complete = len(cnn.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) if cnn is not None else 0
    ok = got == cnn_trials and complete >= 1
    why = f"{got} finished ({complete} complete), asked {cnn_trials}"
    out["CNN study has the trials asked for"] = "ok" if ok else why
    return out


# ---------------------------------------------------------------- the runs
def run_command(name: str, data: Path, budget: str, sets: dict[str, object]) -> list[str]:
    cmd = [sys.executable, "-m", "ensemble", "run", "--run", name, "--preset", "quick", "--data", str(data)]
    cmd += ["--time-budget", budget]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return cmd


def reference(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.time()
    launch = Launch(cmd, {**env, "CHAOS_TAG": "reference"}, log)
    if launch.proc.wait() != 0:
        raise SystemExit(f"the unkilled reference run failed (exit {launch.proc.returncode}); see {log}")
    time.sleep(0.5)
    return time.time() - t0


def windows(root: Path, cnn_trials: int, base_trials: int) -> dict[str, float]:
    """How long after its start marker each target is still at work, from the reference run's stages.json."""
    st = json.loads((root / "stages.json").read_text())["stages"]
    return {
        "cnn": 0.9 * st["cnn_search"]["seconds"] / max(1, cnn_trials),
        "baselines": 0.9 * st["baselines"]["seconds"],
        "build": 0.8 * st["build"]["seconds"],
        "report": 0.8 * st["report"]["seconds"],
        "refit": 0.8 * st.get("refit", {}).get("seconds", 2.0),
    }


def chaos(cmd: list[str], env: dict[str, str], root: Path, kills: int, rng: random.Random, win: dict, log: Path):
    """Run with ``kills`` SIGKILLs of the process group; returns (kill records, orphans, wall seconds)."""
    records, orphans, t0, k = [], [], time.time(), 0
    plan = sorted((TARGETS[i % len(TARGETS)] for i in range(kills)), key=TARGETS.index)  # stage by stage
    while k < kills:
        done = stages_done(root)
        target = next((t for t in plan[k:] + list(TARGETS) if STAGE_OF[t] not in done), None)
        if target is None:
            break  # the run finished before all kills were spent
        tag = f"chaos-{os.getpid()}-{k}"
        launch = Launch(cmd, {**env, "CHAOS_TAG": tag}, log)
        if not launch.wait_for(MARKERS[target], timeout=600):
            launch.proc.wait()
            if launch.proc.returncode != 0:
                raise SystemExit(f"run exited {launch.proc.returncode} before kill {k + 1}; see {log}")
            continue
        delay = rng.uniform(0.0, max(0.3, win[target]))
        time.sleep(delay)
        if launch.proc.poll() is not None:
            records.append((k + 1, target, delay, "ended before the kill"))
            k += 1
            continue
        last = launch.lines[-1] if launch.lines else ""
        launch.kill()
        orphans += orphans_after_kill(tag)
        records.append((k + 1, target, delay, last[:90]))
        print(f"kill {k + 1:>2}/{kills}: {target:<9} +{delay:5.1f}s  last line: {last[:90]}", flush=True)
        k += 1
    final = Launch(cmd, {**env, "CHAOS_TAG": "final"}, log)
    if final.proc.wait() != 0:
        raise SystemExit(f"the run did not finish after the kills (exit {final.proc.returncode}); see {log}")
    return records, orphans, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs to deliver (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    ap.add_argument("--data", type=Path, help="Kaggle data folder to slice (default: the offline demo digits)")
    ap.add_argument("--rows", type=int, default=4000, help="labeled rows of the slice (default 4000)")
    ap.add_argument("--test-rows", type=int, default=1000, help="test rows of the slice (default 1000)")
    ap.add_argument("--cnn-trials", type=int, default=4, help="CNN trials the run is asked for (default 4)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each CNN trial (default 3; --tiny: 2)")
    ap.add_argument("--budget", default="15m", help="the run's --time-budget (default 15m: never reached)")
    ap.add_argument("--tiny", action="store_true", help="a 2-epoch toy CNN space and 600 rows (the test suite's)")
    ap.add_argument("--workdir", type=Path, help="keep runs and logs here (default: a temporary folder)")
    ap.add_argument("--no-reference", action="store_true", help="skip the unkilled run (no overhead figure)")
    args = ap.parse_args(argv)
    from ensemble.quiet import filter_native_logs

    filter_native_logs()  # this process loads the trials' models to check them: no TensorFlow start-up lines
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ensemble-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, test_rows = (600, 100) if args.tiny else (args.rows, args.test_rows)
    data = write_slice(args.data, rows, test_rows, work / "data")
    sets: dict[str, object] = {"cnn_trials": args.cnn_trials, "baseline_trials": 2, "top_k": 3}
    epochs = 2 if args.tiny else args.epochs  # a fixed plan: exactly --cnn-trials members of this many epochs
    sets["plan"] = {"min_epochs": epochs, "max_epochs": epochs, "min_members": args.cnn_trials,
                    "max_members": args.cnn_trials, "overhead_s": 1.0}  # fmt: skip
    if args.tiny:
        (work / "tiny.yaml").write_text(TINY_SPACE)
        sets.update(space=str(work / "tiny.yaml"), baselines="logreg,knn")
    env = {**os.environ, "ENSEMBLE_RUNS": str(work / "runs"), "ENSEMBLE_CACHE": str(work / "cache")}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    cpu = machine_line()
    print(f"chaos: K={args.kills}, seed {args.seed}, {rows:,} + {test_rows:,} rows, {cpu}; logs in {work}", flush=True)
    ref_s, win = None, dict(FIXED_WINDOWS)
    if not args.no_reference:
        ref_s = reference(run_command("reference", data, args.budget, sets), env, work / "reference.log")
        print(f"reference (unkilled) run: {ref_s:.1f}s", flush=True)
        win = windows(work / "runs" / "reference", args.cnn_trials, 2)
    root = work / "runs" / "chaos"
    cmd = run_command("chaos", data, args.budget, sets)
    records, orphans, wall = chaos(cmd, env, root, args.kills, random.Random(args.seed), win, work / "chaos.log")
    results = check_invariants(root, args.cnn_trials)
    results["no process outlives a kill"] = "ok" if not orphans else f"orphans: {orphans}"
    delivered = sum(r[3] != "ended before the kill" for r in records)
    by_stage = {t: sum(r[1] == t and r[3] != "ended before the kill" for r in records) for t in TARGETS}
    print(f"kills delivered: {delivered} of {args.kills} ({', '.join(f'{t} {n}' for t, n in by_stage.items())})")
    for name, verdict in results.items():
        print(f"  [{'PASS' if verdict == 'ok' else 'FAIL'}] {name}" + ("" if verdict == "ok" else f": {verdict}"))
    if ref_s is not None:
        print(f"wall: killed run {wall:.1f}s vs unkilled {ref_s:.1f}s: overhead ratio {wall / ref_s:.2f}")
    else:
        print(f"wall: killed run {wall:.1f}s (no unkilled reference run)")
    failed = [n for n, v in results.items() if v != "ok"]
    if not args.workdir and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or delivered < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
