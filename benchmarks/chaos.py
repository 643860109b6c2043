"""Fault injection: SIGKILL, Ctrl-C, SIGSTOP, a database restart in ``ensemble run --preset quick``; nothing lost?

    python benchmarks/chaos.py                                  # demo digits, 10 SIGKILLs
    python benchmarks/chaos.py --data ../shared/data/digit-recognizer --rows 6000 --test-rows 2000
    python benchmarks/chaos.py --tiny --kills 2                 # the test suite's version (seconds per stage)
    python benchmarks/chaos.py --storage postgres --faults kill:5,sigint:2,stop:2,pgrestart:2,refit-report:1

First an unfaulted reference run (same seed) is timed. Then the run under test is started, and at
seeded random moments after a targeted stage starts, faults are delivered (``--faults KIND:COUNT,...``):

- ``kill``: SIGKILL to the run's process group; shared out over a baseline trial, a CNN trial, build,
  report and refit (10: 2 each);
- ``sigint``: SIGINT to the process group, as a terminal's Ctrl-C; over the same targets;
- ``stop``: SIGSTOP of the process group during a CNN trial for 3 heartbeat intervals + 1 s (past the
  heartbeat grace of 2 intervals), during which this script plays another live worker (Optuna's
  ``fail_stale_trials`` on the study), then SIGCONT; the run goes on, not restarted;
- ``pgrestart``: ``pg_ctl restart -m fast`` of the database during a CNN trial; the run goes on;
- ``refit-report``: SIGKILL as soon as the final refit's finished line is logged, before the report
  that follows it (only when the final model has a CNN, so that there is a refit).

Faults go in the pipeline's order; a target whose stage already finished moves to the next. A run
that a fault ended (or that died after a stop or a database restart: recorded) is started again,
like after a kill, and at the end left to finish. ``stop`` and ``pgrestart`` need ``--storage
postgres``: a throwaway PostgreSQL server (``benchmarks/pgserver.py``) with ``$ENSEMBLE_HEARTBEAT_S``
of ``--heartbeat`` seconds. Checked afterwards (exit 1 if any fails, or a fault was not delivered):

- a valid submission (``ensemble submission check`` rules, the test set's row count);
- no trial left RUNNING in any study;
- every COMPLETE trial's artifacts load (CNN: the Keras model in safe mode; baselines: the saved
  model) and its probabilities have the right shape;
- the ensemble manifest verifies (every listed file's sha256);
- no temporary debris (``.partial`` folders, ``*.tmp`` files, ``.ensemble-tmp/old-*``, search arrays);
- the CNN study has the trials it was asked for (killed trials do not count);
- the submission is the final model's: its labels equal the argmax of the final model that
  ``report/summary.json`` names, predicted again (``ensemble predict``) from ``ensemble-full/`` when that
  was refitted from it, else from ``ensemble/`` (or that trial's test probabilities);
- no process of the run outlives a kill or an exit (children in other sessions included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos_checks import check_invariants, open_storage, submission_is_final_models  # benchmarks/chaos_checks.py
from chaos_faults import Chaos, Launch, fault_plan, parse_faults  # benchmarks/chaos_faults.py
from machine import machine_line  # benchmarks/machine.py

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


# ---------------------------------------------------------------- the runs
def run_command(name: str, data: Path, budget: str, sets: dict[str, object]) -> list[str]:
    cmd = [sys.executable, "-m", "ensemble", "run", "--run", name, "--preset", "quick", "--data", str(data)]
    cmd += ["--time-budget", budget]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return cmd


def reference(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.time()
    launch = Launch(cmd, env, log, "reference")
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


def report_faults(records: list[dict[str, Any]], counts: dict[str, int]) -> None:
    print("faults delivered:")
    for kind, n in counts.items():
        got = [r for r in records if r["kind"] == kind and r["delivered"]]
        where = ", ".join(f"{t} {sum(r['target'] == t for r in got)}" for t in dict.fromkeys(r["target"] for r in got))
        line = f"  {kind}: {len(got)} of {n}" + (f" ({where})" if where else "")
        if kind in ("stop", "pgrestart"):
            died = sum("died" in r.get("after", "") for r in got)
            line += f"; the run went on after {len(got) - died}, died after {died} (resumed)"
        print(line)
        for r in got:
            if kind in ("stop", "pgrestart") and "died" in r.get("after", ""):
                print(f"    #{r['n']}: {r['after']}")
            if kind == "sigint":
                print(f"    #{r['n']}: {r['outcome']}")
        for r in (r for r in records if r["kind"] == kind and not r["delivered"]):
            print(f"    #{r['n']}: {r.get('outcome')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--faults", default="kill", help="KIND[:COUNT],... of kill, sigint, stop, pgrestart, refit-report\n"
                    "(default: kill; a kind without a count: --kills for kill, else 1)")  # fmt: skip
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs when --faults names kill without a count (10)")
    ap.add_argument("--storage", choices=("journal", "postgres"), default="journal",
                    help="the run's Optuna storage: its journal file (default), or a throwaway PostgreSQL")  # fmt: skip
    ap.add_argument("--heartbeat", type=float, default=2.0, help="$ENSEMBLE_HEARTBEAT_S with postgres (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault moments (default 0)")
    ap.add_argument("--data", type=Path, help="Kaggle data folder to slice (default: the offline demo digits)")
    ap.add_argument("--rows", type=int, default=4000, help="labeled rows of the slice (default 4000)")
    ap.add_argument("--test-rows", type=int, default=1000, help="test rows of the slice (default 1000)")
    ap.add_argument("--cnn-trials", type=int, default=4, help="CNN trials the run is asked for (default 4)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each CNN trial (default 3; --tiny: 2)")
    ap.add_argument("--baselines", help="baseline families of the run (default: the quick preset's; --tiny: logreg,knn;"
                    ' "" for none)')  # fmt: skip
    ap.add_argument("--budget", default="15m", help="the run's --time-budget (default 15m: never reached)")
    ap.add_argument("--tiny", action="store_true", help="a 2-epoch toy CNN space and 600 rows (the test suite's)")
    ap.add_argument("--workdir", type=Path, help="keep runs and logs here (default: a temporary folder)")
    ap.add_argument("--no-reference", action="store_true", help="skip the unfaulted run (no overhead figure)")
    args = ap.parse_args(argv)
    try:
        counts = parse_faults(args.faults, args.kills)
    except ValueError as exc:
        ap.error(str(exc))
    if args.storage != "postgres" and (set(counts) & {"stop", "pgrestart"}):
        ap.error("--faults stop and pgrestart need --storage postgres (a heartbeat storage, a server to restart)")
    from ensemble.quiet import filter_native_logs

    filter_native_logs()  # this process loads the trials' models to check them: no TensorFlow start-up lines
    with contextlib.ExitStack() as stack:
        server = None
        if args.storage == "postgres":
            from pgserver import postgres_server  # benchmarks/pgserver.py

            server = stack.enter_context(postgres_server())
        return chaos_main(args, counts, server)


def chaos_main(args: argparse.Namespace, counts: dict[str, int], server: Any) -> int:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ensemble-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, test_rows = (600, 100) if args.tiny else (args.rows, args.test_rows)
    data = write_slice(args.data, rows, test_rows, work / "data")
    # final_members: the anytime final stage adds 2 members (kills land there too), not as many as the budget holds
    sets: dict[str, object] = {"cnn_trials": args.cnn_trials, "baseline_trials": 2, "top_k": 3, "final_members": 2}
    epochs = 2 if args.tiny else args.epochs  # a fixed plan: exactly --cnn-trials members of this many epochs
    sets["plan"] = {"min_epochs": epochs, "max_epochs": epochs, "min_members": args.cnn_trials,
                    "max_members": args.cnn_trials, "overhead_s": 1.0}  # fmt: skip
    if args.tiny:
        (work / "tiny.yaml").write_text(TINY_SPACE)
        sets.update(space=str(work / "tiny.yaml"), baselines="logreg,knn")
    if args.baselines is not None:
        sets["baselines"] = args.baselines
    env = {**os.environ, "ENSEMBLE_RUNS": str(work / "runs"), "ENSEMBLE_CACHE": str(work / "cache")}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    where = "journal file"
    if server is not None:  # the URL through the environment, not argv; a short heartbeat
        env.update(ENSEMBLE_STORAGE=server.url, ENSEMBLE_HEARTBEAT_S=f"{args.heartbeat:g}")
        os.environ["ENSEMBLE_HEARTBEAT_S"] = f"{args.heartbeat:g}"  # fail_stale_cnn_trials: the same grace
        where = f"PostgreSQL (heartbeat {args.heartbeat:g}s)"
    spec = ",".join(f"{k}:{n}" for k, n in counts.items())
    cpu = machine_line()
    print(f"chaos: faults {spec}, seed {args.seed}, {rows:,} + {test_rows:,} rows, storage {where}, {cpu}; "
          f"logs in {work}", flush=True)  # fmt: skip
    ref_s, win = None, dict(FIXED_WINDOWS)
    if not args.no_reference:
        ref_s = reference(run_command("reference", data, args.budget, sets), env, work / "reference.log")
        print(f"reference (unfaulted) run: {ref_s:.1f}s", flush=True)
        win = windows(work / "runs" / "reference", args.cnn_trials, 2)
    root = work / "runs" / "chaos"
    t0 = time.time()
    chaos = Chaos(run_command("chaos", data, args.budget, sets), env, root, work / "chaos.log",
                  random.Random(args.seed), win, server=server, stop_s=3 * args.heartbeat + 1,
                  skip=frozenset({"baselines"} if sets.get("baselines") == "" else ()))  # fmt: skip
    try:
        chaos.run(fault_plan(counts))
    except SystemExit:
        report_faults(chaos.records, counts)  # what was delivered before the run failed
        raise
    wall = time.time() - t0
    storage = open_storage(root, "chaos", server.url if server else None)
    results = check_invariants(root, args.cnn_trials, storage)
    results["the submission is the final model's"] = submission_is_final_models(root, data / "test.csv", storage)
    results["no process outlives a kill"] = "ok" if not chaos.orphans else f"orphans: {chaos.orphans}"
    report_faults(chaos.records, counts)
    for name, verdict in results.items():
        ok = verdict == "ok" or verdict.startswith("ok (")
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + ("" if verdict == "ok" else f": {verdict}"))
    if ref_s is not None:
        print(f"wall: faulted run {wall:.1f}s vs unfaulted {ref_s:.1f}s: overhead ratio {wall / ref_s:.2f}")
    else:
        print(f"wall: faulted run {wall:.1f}s (no unfaulted reference run)")
    failed = [n for n, v in results.items() if not (v == "ok" or v.startswith("ok ("))]
    if not args.workdir and not failed:
        shutil.rmtree(work, ignore_errors=True)
    undelivered = sum(not r["delivered"] for r in chaos.records)
    return 1 if failed or undelivered else 0


if __name__ == "__main__":
    sys.exit(main())
