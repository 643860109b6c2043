"""Benchmark: load the real train.csv.gz; time and peak memory against pandas.read_csv.

Usage: python benchmarks/load_data.py [DATA_DIR]   (default ../shared/data/digit-recognizer)
Targets (issue 2): < 3 s, peak memory <= ~3x the uint8 array size.
"""

from __future__ import annotations

import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from ensemble.data.load import load_train, locate


def measure(fn, repeats: int = 3) -> tuple[float, int, object]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak, out


def main() -> None:
    folder = Path(
        sys.argv[1]
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1].parent / "shared/data/digit-recognizer"
    )
    src = locate(folder)
    t_ours, peak_ours, (x, y) = measure(lambda: load_train(src.train))
    size = x.nbytes + y.nbytes

    import pandas as pd

    def with_pandas():
        with src.train.open() as fh:
            return pd.read_csv(fh, dtype=np.uint8).to_numpy()

    t_pd, peak_pd, ref = measure(with_pandas)
    assert np.array_equal(ref[:, 0], y) and np.array_equal(ref[:, 1:].reshape(-1, 28, 28), x)
    print(f"file                 {src.train.name} ({x.shape[0]:,} rows)")
    print(f"array size           {size / 2**20:.1f} MiB (uint8)")
    print(
        f"ensemble loader      {t_ours:.2f} s median of 3, "
        f"peak {peak_ours / 2**20:.1f} MiB = {peak_ours / size:.2f}x array"
    )
    print(
        f"pandas.read_csv      {t_pd:.2f} s median of 3, peak {peak_pd / 2**20:.1f} MiB = {peak_pd / size:.2f}x array"
    )
    print(f"speed-up vs pandas   {t_pd / t_ours:.2f}x")
    print(
        f"targets              time < 3 s: {'PASS' if t_ours < 3 else 'FAIL'}; "
        f"peak <= 3x: {'PASS' if peak_ours <= 3 * size else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
