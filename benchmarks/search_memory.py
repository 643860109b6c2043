"""Benchmark: process RSS across many CNN trials in one process (memory must not grow without bound).

    python benchmarks/search_memory.py [--trials 20]

Runs a tiny search (small CNN, 1 epoch, 600 demo images; trials in child processes unless
--in-process) in a throwaway run folder and prints the
resident set size after each trial, then the growth from trial 5 to the last.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

SPACE = """\
conv_blocks: 2
filters: {type: categorical, choices: [4, 8]}
dense_units: 16
batch_size: 64
epochs: 1
learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--in-process", action="store_true", help="train in this process (no child worker per trial)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["ENSEMBLE_RUNS"] = str(tmp / "runs")
    (tmp / "cnn.yaml").write_text(SPACE)

    from ensemble.data.runs import open_run
    from ensemble.search.cnn.serve import rss_mb  # what a trainer reports after each trial
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search

    run = open_run("mem", say=lambda s: None)
    space = load_cnn_space(tmp / "cnn.yaml")
    seen: list[float] = []

    def say(msg: str) -> None:
        if " done:" in msg:
            seen.append(rss_mb())
            print(f"trial {len(seen):>3}: RSS {seen[-1]:7.1f} MiB", flush=True)

    run_search(
        run,
        space,
        SearchSettings(trials=args.trials, pruner="none", max_train=600, isolate=not args.in_process),
        say=say,
    )
    if len(seen) > 5:
        print(
            f"RSS after trial 5: {seen[4]:.1f} MiB; after trial {len(seen)}: {seen[-1]:.1f} MiB; "
            f"growth {seen[-1] - seen[4]:+.1f} MiB ({(seen[-1] - seen[4]) / (len(seen) - 5):+.2f} MiB/trial)"
        )


if __name__ == "__main__":
    main()
