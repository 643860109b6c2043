"""Throughput of ``ensemble predict``: 28,000 images x 5 members x 8 TTA views (target <= 60 s).

Builds an ensemble folder of randomly initialised CNNs of a chosen size (speed does not depend
on the weights), then times the real predict path (hash check, load, TTA, soft voting) on random
images. Prints the CPU model (lscpu), time, images/s and each member's parameters and FLOPs per
image; then, in the same run, the reference path (the previous ``member_probas``: batches shared
out among threads, every thread calling every model) and the ratio reference / product path,
with the largest probability difference and the number of labels that differ between them.
Under JAX the reference path fails (a model called from two threads at once): the script says so.
The backend is ``$KERAS_BACKEND``.
``--bf16`` also times the opt-in bfloat16 path and counts the labels it changes: untrained
members on random pixels give nearly uniform probabilities (top-2 margins ~1e-5), so that count
is an upper bound on what bfloat16 does to trained members on digits; the largest float32 margin
among the changed labels is printed with it.

    python benchmarks/predict_throughput.py --cnn conv_blocks=3   # the quick preset's member (656k params)
    python benchmarks/predict_throughput.py --cnn conv_blocks=3 --bf16
    KERAS_BACKEND=torch python benchmarks/predict_throughput.py --images 4000 --one-thread  # 2 threads vs 1
    python benchmarks/predict_throughput.py                      # small member: 16-32 filters, dense 64
    python benchmarks/predict_throughput.py --filters 32,64 --dense 128
    python benchmarks/predict_throughput.py --sweep --images 4000 # several sizes, extrapolated to 28,000
    python benchmarks/predict_throughput.py --cnn filters=16,conv_blocks=2,dense_units=64  # ensemble.search.cnn.model

Timings on a shared CPU are noisy: run it twice and compare with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import cpu_model  # benchmarks/machine.py

from ensemble.combine.manifest import FORMAT, INPUT_SPEC, Manifest, MemberEntry, write_manifest
from ensemble.combine.records import DataInfo, KerasInfo, Tta
from ensemble.combine.tta import CANDIDATES, stack_views
from ensemble.errors import one_line
from ensemble.inference.predict import load_ensemble, predict_proba
from ensemble.search.cnn.simplify import model_cost

VIEWS8 = list(CANDIDATES[:8])  # identity, 4 one-pixel shifts, rot +-8, zoom 1.1
SWEEP = [("8,16", 32), ("16,32", 64), ("32,64", 128), ("32,64,128", 128)]


def make_cnn(filters: list[int], dense: int, seed: int = 0):
    """Conv(3x3, same)-BN-ReLU-MaxPool blocks, then Flatten-Dense-Softmax; input raw 0..255 pixels."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((28, 28, 1))
    x = layers.Rescaling(1 / 255.0)(x)
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x))


def parse_cnn(text: str) -> dict:
    """``key=value,...`` -> the keys of a CnnConfig for ``ensemble.search.cnn.model.build_model`` (ints, floats,
    true/false, words)."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        val: object = {"true": True, "false": False}.get(raw.lower(), raw)
        for cast in (int, float):
            try:
                val = cast(raw)
                break
            except ValueError:
                pass
        out[key.strip()] = val
    return out


def reference_proba(ens, images: np.ndarray, batch_size: int, workers: int = 2) -> np.ndarray:
    """The previous product path, kept as the reference: batches of all views shared out among
    ``workers`` threads, each thread calling every model; weighted mean over members of their
    mean over views."""
    from concurrent.futures import ThreadPoolExecutor

    cnns = [m for m in ens.members if m.model is not None]
    views, n = ens.views, len(images)
    full = min(batch_size, n)
    total = np.zeros((n, 10), np.float64)
    lock = threading.Lock()

    def run_batch(start: int) -> None:
        chunk = images[start : start + batch_size]
        b = len(chunk)
        if b < full:
            chunk = np.concatenate([chunk, np.zeros((full - b, 28, 28), chunk.dtype)])
        xb = stack_views(views, chunk)
        acc = np.zeros((b, 10), np.float64)
        for m in cnns:
            p = np.asarray(m.model.predict_on_batch(xb), np.float32).reshape(len(views), full, 10)[:, :b]
            acc += m.weight * p.mean(axis=0)
        with lock:
            total[start : start + b] = acc

    starts = list(range(0, n, batch_size))
    run_batch(starts[0])
    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(run_batch, s) for s in starts[1:]]:
            fut.result()
    return (total / sum(m.weight for m in ens.members)).astype(np.float32)


def write_ensemble(folder: Path, models: list, views: list[str]) -> None:
    """A minimal ensemble folder in the format ``ensemble build`` writes."""
    import keras

    (folder / "members").mkdir(parents=True, exist_ok=True)
    members = []
    for i, m in enumerate(models):
        rel = f"members/bench-{i}.keras"
        m.save(folder / rel)
        members.append(MemberEntry(f"bench-{i}", "cnn", 1.0 / len(models), file=rel))
    manifest = Manifest(
        FORMAT,
        tuple(members),
        Tta(tuple(views), "list"),
        {},
        preprocessing={"input": INPUT_SPEC},
        keras=KerasInfo(keras.backend.backend(), keras.version()),
        data=DataInfo("benchmark", None, None),
    )
    write_manifest(folder, manifest)


def bench(
    filters: list[int],
    dense: int,
    members: int,
    views: list[str],
    n: int,
    batch_size: int,
    cnn: dict | None = None,
    workers: int | None = None,
    reference: bool = True,
    bf16: bool = False,
    one_thread: bool = False,
) -> dict:
    import keras

    if cnn is not None:
        from ensemble.search.cnn.config import CnnConfig
        from ensemble.search.cnn.model import build_model

        config = CnnConfig.from_json(cnn, where="--cnn")
        models = []
        for i in range(members):
            keras.utils.set_random_seed(i)
            models.append(build_model(config))
    else:
        models = [make_cnn(filters, dense, seed=i) for i in range(members)]
    cost = model_cost(models[0])
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        write_ensemble(Path(tmp), models, views)
        t0 = time.perf_counter()
        ens = load_ensemble(tmp)
        t_load = time.perf_counter() - t0
        predict_proba(ens, images[: min(n, batch_size)], batch_size=batch_size)  # warm-up: trace/compile
        t1 = time.perf_counter()
        p = predict_proba(ens, images, batch_size=batch_size, progress=sys.stderr.isatty(), workers=workers)
        sec = time.perf_counter() - t1
        extra: dict = {}
        if reference:
            try:
                reference_proba(ens, images[: min(n, batch_size)], batch_size)  # warm-up
                t2 = time.perf_counter()
                ref = reference_proba(ens, images, batch_size)
                extra["reference_s"] = time.perf_counter() - t2
                extra["reference_maxdiff"] = float(np.abs(ref - p).max())
                extra["reference_label_diffs"] = int(np.sum(ref.argmax(1) != p.argmax(1)))
            except Exception as exc:  # under JAX: a model called from two threads at once
                extra["reference_error"] = one_line(exc, 200)
        if one_thread:
            t4 = time.perf_counter()
            p1 = predict_proba(ens, images, batch_size=batch_size, workers=1)
            extra["one_thread_s"] = time.perf_counter() - t4
            extra["one_thread_maxdiff"] = float(np.abs(p1 - p).max())
        if bf16:
            predict_proba(ens, images[: min(n, batch_size)], batch_size=batch_size, precision="bfloat16")
            t3 = time.perf_counter()
            pb = predict_proba(ens, images, batch_size=batch_size, workers=workers, precision="bfloat16")
            extra["bf16_s"] = time.perf_counter() - t3
            extra["bf16_maxdiff"] = float(np.abs(pb - p).max())
            extra["bf16_label_diffs"] = int(np.sum(pb.argmax(1) != p.argmax(1)))
            top2 = np.sort(p, axis=1)[:, -2:]
            changed = pb.argmax(1) != p.argmax(1)
            extra["bf16_changed_max_margin"] = float((top2[:, 1] - top2[:, 0])[changed].max()) if changed.any() else 0.0
    assert p.shape == (n, 10)
    passes = n * members * len(views)
    return {
        **extra,
        "backend": keras.backend.backend(),
        "member": f"ensemble.search.cnn.model {cnn}" if cnn is not None else f"conv {filters} dense {dense}",
        **cost,
        "load_s": t_load,
        "seconds": sec,
        "images_per_s": n / sec,
        "passes_per_s": passes / sec,
        "gflops_per_s": passes * cost["flops"] / sec / 1e9,
        "n": n,
    }


def report(r: dict, members: int, n_views: int, target_n: int) -> None:
    est = r["seconds"] * target_n / r["n"]
    print(
        f"[{r['backend']}] member {r['member']}: {r['params']:,} params, "
        f"{r['flops'] / 1e6:.2f} MFLOPs/image | {r['n']:,} images x {members} members x {n_views} views: "
        f"{r['seconds']:.1f}s, {r['images_per_s']:,.0f} images/s, {r['passes_per_s']:,.0f} model-passes/s, "
        f"{r['gflops_per_s']:.1f} GFLOP/s | load {r['load_s']:.1f}s"
        + (f" | est. {est:.0f}s for {target_n:,}" if r["n"] != target_n else "")
        + (" | OK <= 60s" if est <= 60 else " | OVER 60s")
    )
    if "reference_s" in r:
        print(
            f"  reference (previous path: batches in 2 threads, every thread calls every model): "
            f"{r['reference_s']:.1f}s | ratio reference / product path {r['reference_s'] / r['seconds']:.2f}x | "
            f"max |dp| {r['reference_maxdiff']:.2g}, labels differing {r['reference_label_diffs']} of {r['n']:,}"
        )
    if "one_thread_s" in r:
        print(
            f"  one thread (workers=1): {r['one_thread_s']:.1f}s | ratio one thread / product path "
            f"{r['one_thread_s'] / r['seconds']:.2f}x | max |dp| {r['one_thread_maxdiff']:.2g}"
        )
    if "reference_error" in r:
        print(f"  reference (previous path: batches in 2 threads, every thread calls every model): FAILED: "
              f"{r['reference_error']}")  # fmt: skip
    if "bf16_s" in r:
        print(
            f"  bfloat16 (opt-in): {r['bf16_s']:.1f}s, est. {r['bf16_s'] * target_n / r['n']:.0f}s for {target_n:,} | "
            f"speed-up vs float32 {r['seconds'] / r['bf16_s']:.2f}x | max |dp| {r['bf16_maxdiff']:.2g}, "
            f"labels changed {r['bf16_label_diffs']} of {r['n']:,} (largest float32 top-2 margin among them "
            f"{r['bf16_changed_max_margin']:.2g})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=28_000)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--views", type=int, default=8, help="first N of identity,shift x4,rot +-8,zoom 1.1,zoom 0.9")
    ap.add_argument("--filters", default="16,32", help="conv filters per block, comma-separated")
    ap.add_argument("--dense", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128, help="images per batch (x views per model call)")
    ap.add_argument("--workers", type=int, help="batches predicted at once in threads (default 2)")
    ap.add_argument("--sweep", action="store_true", help=f"try member sizes {SWEEP}")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the previous path (the ratio's reference)")
    ap.add_argument("--bf16", action="store_true", help="also time the opt-in bfloat16 path and count changed labels")
    ap.add_argument("--one-thread", action="store_true", help="also time the product path in one thread (workers=1)")
    ap.add_argument("--cnn", action="append", metavar="K=V,...", help="member = cnn build_model(config) (repeatable)")
    args = ap.parse_args()
    views = list(CANDIDATES[: args.views])
    print(
        f"CPU {cpu_model()} | Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, views {views}"
    )
    if args.cnn:
        for text in args.cnn:
            r = bench(
                [],
                0,
                args.members,
                views,
                args.images,
                args.batch_size,
                parse_cnn(text),
                args.workers,
                not args.no_reference,
                args.bf16,
                args.one_thread,
            )
            report(r, args.members, len(views), 28_000)
        return 0
    sizes = SWEEP if args.sweep else [(args.filters, args.dense)]
    for filters, dense in sizes:
        f = [int(v) for v in filters.split(",")]
        r = bench(
            f,
            dense,
            args.members,
            views,
            args.images,
            args.batch_size,
            workers=args.workers,
            reference=not args.no_reference,
            bf16=args.bf16,
            one_thread=args.one_thread,
        )
        report(r, args.members, len(views), 28_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
