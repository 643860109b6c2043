"""What coordinating a fleet costs: Optuna ask/tell round trips per second and per-trial overhead for
1, 4, 16 and 64 concurrent workers with a no-op objective, on three storages, plus the time to upload
and download one trial's files through Optuna's artifact store.

    python benchmarks/storage_scaling.py                       # journal, postgres, grpc; 1,4,16,64 workers
    python benchmarks/storage_scaling.py --workers 1,4 --seconds 5 --storages journal   # a quick look

Storages:
- ``journal``: the zero-setup default, ``JournalFileBackend`` on a local file (one machine only);
- ``postgres``: a throwaway PostgreSQL 15 server (tests/postgres.py: initdb + pg_ctl, loopback), each
  worker with its own ``RDBStorage`` and heartbeat, as ``ensemble worker`` opens it;
- ``grpc``: the same database behind ``ensemble storage-proxy`` (``optuna.storages.run_grpc_proxy_server``),
  each worker a ``GrpcStorageProxy`` (``--storage grpc://HOST:PORT``).

The workers are processes started once per storage (imports paid before timing); for each fleet
size N, N of them run ``ask`` -> suggest 4 parameters -> ``tell`` with the product's sampler (TPE,
``constant_liar``, 10 random start-up trials) on a fresh study for ``--seconds``, all starting
together. Reported: trials/s for the fleet, and each trial's ask + tell time (median, p95), which
is what a worker spends on coordination per trial. On a 2-core machine, 16 and 64 workers also
compete for the CPU: the figures are the coordination cost where all workers share one host.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/postgres.py: the throwaway server the tests use

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def _open(kind: str, where: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from ensemble.search.storage import connect

    if kind == "journal":
        return optuna.storages.JournalStorage(JournalFileBackend(where))
    return connect(where, heartbeat=(kind == "postgres"))  # grpc://: GrpcStorageProxy (no heartbeat through it)


def _worker(kind: str, where: str, jobs: Any, results: Any) -> None:
    """Wait for (study, start_at, seconds) jobs; run ask/tell until the time is up; report the timings."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.simplefilter("ignore")
    storage = _open(kind, where)
    results.put(("ready", os.getpid()))
    while (job := jobs.get()) is not None:
        name, start_at, seconds = job
        sampler = optuna.samplers.TPESampler(seed=os.getpid(), constant_liar=True, n_startup_trials=10)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        time.sleep(max(0.0, start_at - time.time()))
        costs: list[float] = []
        end = start_at + seconds
        while time.time() < end:
            t0 = time.perf_counter()
            trial = study.ask()
            x = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
            trial.suggest_int("filters", 16, 64)
            trial.suggest_categorical("optimizer", ["adamw", "sgd"])
            trial.suggest_float("dropout", 0.0, 0.5)
            study.tell(trial, x)
            costs.append(time.perf_counter() - t0)
        results.put(("done", costs))


@contextmanager
def _storage(kind: str, stack: ExitStack, tmp: Path) -> Iterator[str]:
    if kind == "journal":
        yield str(tmp / "bench.journal")
        return
    from postgres import free_port, postgres_server

    url = stack.enter_context(postgres_server())
    if kind == "postgres":
        yield url
        return
    port = free_port()
    env = {**os.environ, "ENSEMBLE_STORAGE": url}
    cmd = [sys.executable, "-c", "import sys; from ensemble.cli import main; sys.exit(main())"]
    proxy = subprocess.Popen([*cmd, "storage-proxy", "--host", "127.0.0.1", "--port", str(port)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def _wait_for_proxy(url: str, seconds: float = 180.0) -> None:
    from ensemble.errors import UsageError

    deadline = time.time() + seconds
    while True:
        try:
            _open("grpc", url)
            return
        except UsageError:
            if time.time() > deadline:
                raise


def measure(kind: str, fleet: list[int], seconds: float) -> list[dict[str, Any]]:
    """One storage: start max(fleet) workers, then time each fleet size in turn."""
    import optuna

    ctx = mp.get_context("spawn")
    rows = []
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="storage-scaling-"))
        stack.callback(shutil.rmtree, tmp, True)
        where = stack.enter_context(_storage(kind, stack, tmp))
        if kind == "grpc":
            _wait_for_proxy(where)
        optuna.create_study(study_name="schema", storage=_open(kind, where))  # tables made before the fleet
        jobs, results = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(kind, where, jobs, results)) for _ in range(max(fleet))]
        for p in procs:
            p.start()
        for _ in procs:
            _result(results, procs, 600)
        try:
            for n in fleet:
                name = f"scaling-{n}"
                optuna.create_study(study_name=name, storage=_open(kind, where))
                start_at = time.time() + 2.0
                for _ in range(n):
                    jobs.put((name, start_at, seconds))
                costs = [c for _ in range(n) for c in _result(results, procs, seconds + 600)[1]]
                rows.append(_row(kind, n, seconds, costs))
                print(_line(rows[-1]), flush=True)
        finally:
            for _ in procs:
                jobs.put(None)
            for p in procs:
                p.join(timeout=60)
    return rows


def _result(results: Any, procs: list[Any], timeout: float) -> Any:
    """The next worker's message; stops the benchmark if a worker died (else the queue waits forever)."""
    import queue

    deadline = time.time() + timeout
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.time() > deadline:
                raise SystemExit(f"a worker process failed (exit {dead}) or timed out") from None


def _row(kind: str, n: int, seconds: float, costs: list[float]) -> dict[str, Any]:
    ms = sorted(c * 1000 for c in costs)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else float("nan")
    return {"storage": kind, "workers": n, "trials": len(ms), "per_s": len(ms) / seconds,
            "median_ms": statistics.median(ms) if ms else float("nan"), "p95_ms": p95}  # fmt: skip


def _line(r: dict[str, Any]) -> str:
    return (f"| {r['storage']:<8} | {r['workers']:>3} | {r['trials']:>6,} | {r['per_s']:>9.1f} | "
            f"{r['median_ms']:>9.1f} | {r['p95_ms']:>9.1f} |")  # fmt: skip


def artifact_times(repeats: int) -> tuple[float, float, float]:
    """Seconds to upload and download one trial's files (a CNN trial's sizes), and their total MB."""
    import numpy as np
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    from ensemble.search.artifacts import upload_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="artifact-bench-"))
    try:
        trial_dir = tmp / "trial"
        trial_dir.mkdir()
        rng = np.random.default_rng(0)
        # a default CNN trial's files: the .keras model (~2.6 MB), config, curve PNG, val/holdout/test probabilities
        sizes = {"model.keras": 2_600_000, "config.json": 2_000, "learning_curve.png": 40_000}
        for name, size in sizes.items():
            (trial_dir / name).write_bytes(rng.bytes(size))
        for part, rows in (("val", 4200), ("holdout", 4200), ("test", 28000)):
            np.save(trial_dir / f"proba_{part}.npy", rng.random((rows, 10), dtype=np.float32))
        mb = sum(p.stat().st_size for p in trial_dir.iterdir()) / 1e6
        (tmp / "store").mkdir()
        store = FileSystemArtifactStore(str(tmp / "store"))
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp / "j.log")))
        study = optuna.create_study(storage=storage)
        up, down = [], []
        for i in range(repeats):
            trial = study.ask()
            t0 = time.perf_counter()
            upload_trial(trial, trial_dir, store=store)
            up.append(time.perf_counter() - t0)
            frozen = study.trials[-1]
            out = tmp / f"down-{i}"
            out.mkdir()
            t0 = time.perf_counter()
            for meta in get_all_artifact_meta(frozen, storage=storage):
                path = str(out / meta.filename)
                download_artifact(artifact_store=store, file_path=path, artifact_id=meta.artifact_id)
            down.append(time.perf_counter() - t0)
            study.tell(trial, 0.0)
        return statistics.median(up), statistics.median(down), mb
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,4,16,64", help="fleet sizes, comma-separated (default: 1,4,16,64)")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per fleet size (default: 15)")
    ap.add_argument("--storages", default="journal,postgres,grpc", help="any of journal,postgres,grpc")
    ap.add_argument("--artifact-repeats", type=int, default=5, help="uploads/downloads timed (0: skip)")
    args = ap.parse_args()
    fleet = [int(n) for n in args.workers.split(",")]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.seconds:g} s per fleet size")
    print("| storage  | workers | trials | trials/s | ask+tell median ms | p95 ms |")
    print("| -------- | ------: | -----: | -------: | -----------------: | -----: |")
    rows = [r for kind in args.storages.split(",") for r in measure(kind, fleet, args.seconds)]
    base = {r["workers"]: r["per_s"] for r in rows if r["storage"] == rows[0]["storage"]}
    for r in rows:
        if r["storage"] != rows[0]["storage"] and base.get(r["workers"]):
            print(f"{r['storage']} / {rows[0]['storage']} trials/s at {r['workers']} workers: "
                  f"{r['per_s'] / base[r['workers']]:.2f}")  # fmt: skip
    if args.artifact_repeats:
        up, down, mb = artifact_times(args.artifact_repeats)
        print(
            f"artifacts: one CNN trial's files ({mb:.1f} MB, 7 files) upload {up * 1000:.0f} ms, "
            f"download {down * 1000:.0f} ms (median of {args.artifact_repeats}; FileSystemArtifactStore, local disk)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
