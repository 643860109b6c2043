"""Benchmark: the overhead of a CNN trial, a fresh process per trial against a reused trainer process.

    python benchmarks/trial_overhead.py [--trials 6] [--epochs 3] [--rounds 1] [--recycle-after 10]

A tiny search (a small CNN, a few epochs on 1,000 demo digits) where the overhead dominates, as it
does on a GPU where an epoch of 33,600 digits takes a fraction of a second. Each round runs the same
search twice in a throwaway run, in the same process and on the same data:

- reference: a fresh trainer process for every trial (``recycle_after=1``: start, import Keras,
  load the data, train, exit), as the search trained before trainers were reused;
- reused: trainer processes that train ``--recycle-after`` trials each (the default).

A trial's overhead is its wall time (as the search sees it) less its steady training time (epochs
x the median time between epoch ends): process start-up, imports, data loading, compiling,
predicting validation/holdout/test, saving. Printed per trial, then the mean (start-ups and
recycles included) and median per mode, and the ratio reference / reused.

``--probe`` then times the start of a planned search, the speed probe and the first trial, both ways:
the probe in a process of its own and the trial in a fresh trainer (as before), against the probe as the
first trainer's first job, that trainer then training the trial (as ``ensemble run`` does now).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from machine import machine_line

SPACE = """\
conv_blocks: 2
filters: 8
dense_units: 32
batch_size: 64
epochs: {epochs}
rotation: 5.0
learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
"""


def search(name: str, space_file: Path, trials: int, recycle_after: int) -> list[dict[str, float]]:
    """One search of ``trials`` trials; each trial's wall and overhead seconds."""
    from ensemble.data.runs import open_run
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search

    run = open_run(name, say=lambda s: None)
    settings = SearchSettings(trials=trials, pruner="none", max_train=1000, recycle_after=recycle_after)
    study = run_search(run, load_cnn_space(space_file), settings, say=lambda s: None)
    return [
        {"wall": t.user_attrs["trial_seconds"], "overhead": t.user_attrs["overhead_seconds"],
         "train": t.user_attrs["train_seconds"]}
        for t in study.trials if t.state.name == "COMPLETE"
    ]  # fmt: skip


def probe_then_trial(name: str, space_file: Path, in_trainer: bool) -> float:
    """Seconds for the speed probe (1,000 digits) and then one trial: the probe in its own process or in the
    search's first trainer."""
    from ensemble.data.runs import open_run
    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search, trainers
    from ensemble.search.cnn.trainer import probe_speed

    run = open_run(name, say=lambda s: None)
    space = load_cnn_space(space_file)
    config = CnnConfig.from_json(space.defaults(), extra="ignore")
    settings = SearchSettings(trials=1, pruner="none", max_train=1000)
    t0 = time.perf_counter()
    if in_trainer:
        with trainers(run, settings, lambda s: None) as pool:
            pool.probe(config, 1000)
            run_search(run, space, settings, say=lambda s: None, pool=pool)
    else:
        x, y = run.part("train")
        probe_speed(config, x[:1000], y[:1000], images=1000)
        run_search(run, space, settings, say=lambda s: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6, help="trials per search")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per trial (at least 2: the steady epoch time)")
    ap.add_argument("--rounds", type=int, default=1, help="reference + reused searches, alternated")
    ap.add_argument("--recycle-after", type=int, default=10, help="trials per reused trainer process")
    ap.add_argument("--probe", action="store_true", help="also time the speed probe + first trial, both ways")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trial-overhead-"))
    os.environ["ENSEMBLE_RUNS"] = str(tmp / "runs")
    epochs = max(2, args.epochs)
    (tmp / "cnn.yaml").write_text(SPACE.format(epochs=epochs))
    print(f"CPU: {machine_line()}", flush=True)
    print(f"{args.trials} trials x {epochs} epochs on 1,000 demo digits per search, {args.rounds} round(s)")
    found: dict[str, list[dict[str, float]]] = {"reference": [], "reused": []}
    for r in range(args.rounds):
        for mode, recycle in (("reference", 1), ("reused", args.recycle_after)):
            t0 = time.perf_counter()
            got = search(f"{mode}-{r}", tmp / "cnn.yaml", args.trials, recycle)
            found[mode] += got
            each = " ".join(f"{g['overhead']:.1f}" for g in got)
            took = time.perf_counter() - t0
            print(f"round {r + 1} {mode:9s}: {took:6.1f}s for {len(got)} trials; overhead per trial {each}", flush=True)
    summary = {}
    for mode, got in found.items():
        over = [g["overhead"] for g in got]
        wall = [g["wall"] for g in got]
        summary[mode] = statistics.mean(over)
        print(
            f"{mode:9s}: overhead per trial mean {statistics.mean(over):.2f}s, median {statistics.median(over):.2f}s; "
            f"trial wall mean {statistics.mean(wall):.2f}s; overhead share {sum(over) / sum(wall):.0%}"
        )
    ratio = summary["reference"] / max(summary["reused"], 1e-9)
    print(f"overhead per trial, reference / reused (means): {ratio:.2f}x")
    if args.probe:
        for r in range(args.rounds):
            own = probe_then_trial(f"probe-own-{r}", tmp / "cnn.yaml", in_trainer=False)
            first = probe_then_trial(f"probe-first-{r}", tmp / "cnn.yaml", in_trainer=True)
            both = f"own process {own:.1f}s, first trainer's job {first:.1f}s ({own / first:.2f}x)"
            print(f"round {r + 1} probe + first trial: {both}", flush=True)
    print(f"CPU after: {machine_line()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
