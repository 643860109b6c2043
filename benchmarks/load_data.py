"""Benchmark: load the real train.csv.gz; time and peak memory against pandas.read_csv.

Usage: python benchmarks/load_data.py [DATA_DIR]   (default ../shared/data/digit-recognizer)
Peak memory twice: Python allocations (tracemalloc) and the peak resident size above the size
before the load, each load in a fresh process (Linux: the peak is reset via /proc/self/clear_refs).
Targets: < 3 s, peak memory <= ~3x the uint8 array size.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from machine import machine_line  # benchmarks/machine.py

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


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _pandas_load(src) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    with src.train.open() as fh:
        table = pd.read_csv(fh, dtype=np.uint8).to_numpy()
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0]


def rss_child(which: str, folder: str) -> None:
    """In a fresh process: print the peak resident bytes above the resident size before one load."""
    src = locate(folder)
    load = (lambda: load_train(src.train)) if which == "ours" else (lambda: _pandas_load(src))
    if which == "pandas":
        import pandas  # noqa: F401  (imported before the measurement, as ours is)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kib("VmRSS")
    out = load()
    print((_kib("VmHWM") - before) * 1024, out[0].nbytes + out[1].nbytes)


def peak_rss(which: str, folder: Path) -> int | None:
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, __file__, "--rss-child", which, str(folder)]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    if sys.argv[1:2] == ["--rss-child"]:
        return rss_child(sys.argv[2], sys.argv[3])
    folder = Path(
        sys.argv[1]
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1].parent / "shared/data/digit-recognizer"
    )
    src = locate(folder)
    t_ours, peak_ours, (x, y) = measure(lambda: load_train(src.train))
    size = x.nbytes + y.nbytes

    t_pd, peak_pd, (ref_x, ref_y) = measure(lambda: _pandas_load(src))
    assert np.array_equal(ref_y, y) and np.array_equal(ref_x, x)
    rss_ours, rss_pd = peak_rss("ours", folder), peak_rss("pandas", folder)
    print(f"machine              {machine_line()}")
    print(f"file                 {src.train.name} ({x.shape[0]:,} rows)")
    print(f"array size           {size / 2**20:.1f} MiB (uint8)")
    print(
        f"ensemble loader      {t_ours:.2f} s median of 3, "
        f"peak {peak_ours / 2**20:.1f} MiB = {peak_ours / size:.2f}x array"
    )
    print(
        f"pandas.read_csv      {t_pd:.2f} s median of 3, peak {peak_pd / 2**20:.1f} MiB = {peak_pd / size:.2f}x array"
    )
    if rss_ours is not None and rss_pd is not None:
        print(f"peak RSS, ensemble   {rss_ours / 2**20:.1f} MiB = {rss_ours / size:.2f}x array (fresh process)")
        print(f"peak RSS, pandas     {rss_pd / 2**20:.1f} MiB = {rss_pd / size:.2f}x array (fresh process)")
    print(f"speed-up vs pandas   {t_pd / t_ours:.2f}x")
    print(
        f"targets              time < 3 s: {'PASS' if t_ours < 3 else 'FAIL'}; "
        f"peak <= 3x: {'PASS' if peak_ours <= 3 * size else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
