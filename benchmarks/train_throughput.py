"""Benchmark: training images/s and time-to-99.3% validation accuracy, ours vs the classic Kaggle kernel.

Reference (same run, same data, same backend): the classic Kaggle Keras kernel —
2x Conv32 5x5, max-pool, dropout .25; 2x Conv64 3x3, max-pool, dropout .25; Dense 256,
dropout .5; RMSprop, batch 86, NumPy-side augmentation (rotation 10, zoom .1, shift .1) per batch.
Ours: ``ensemble.search.cnn.model`` with in-graph augmentation and a one-cycle schedule over ``--epochs``
(default 6; config below). Both stop at the target.

    python benchmarks/train_throughput.py                     # full: time-to-99.3% for both (real data)
    python benchmarks/train_throughput.py --throughput-only   # images/s only, every installed backend
    python benchmarks/train_throughput.py --options           # ours under CPU options: bf16, jit, threads, batch

The backend is $KERAS_BACKEND (or --backend). Data: $ENSEMBLE_DATA, else ../shared/data/digit-recognizer if present,
else the offline demo digits (time-to-target is then not meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_model, machine_line  # benchmarks/machine.py

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "digit-recognizer"
REAL = Path(os.environ.get("ENSEMBLE_DATA") or SHARED)
TARGET = 0.993
OURS = {
    "conv_blocks": 3,
    "filters": 24,
    "kernel_size": 3,
    "batch_norm": True,
    "downsample": "maxpool",
    "conv_dropout": 0.1,
    "head": "flatten",
    "dense_units": 128,
    "dense_dropout": 0.3,
    "optimizer": "adamw",
    "learning_rate": 4e-3,
    "lr_schedule": "onecycle",
    "weight_decay": 1e-4,
    "label_smoothing": 0.05,
    "batch_size": 128,
    "epochs": 6,  # the one-cycle schedule's length (--epochs): it anneals by the last epoch
    "rotation": 8.0,
    "zoom": 0.08,
    "shift": 0.08,
}


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from ensemble.data.demo import ensure_demo
    from ensemble.data.load import load_dataset
    from ensemble.data.split import stratified_split

    ds = load_dataset(REAL if REAL.exists() else ensure_demo())
    s = stratified_split(ds.y_train, seed=0, val_frac=0.1, holdout_frac=0.0)
    return ds.x_train[s.train], ds.y_train[s.train], ds.x_train[s.val], ds.y_train[s.val]


def reference_model(in_graph_augment: bool = False):
    """The Kaggle kernel's network; ``in_graph_augment`` adds /255 and its augmentation as Keras layers."""
    import keras
    from keras import layers

    from ensemble.search.cnn.augment import RandomAffine

    augment = [layers.Rescaling(1 / 255.0), RandomAffine(10, 0.1, 0.1)] if in_graph_augment else []
    m = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            *augment,
            layers.Conv2D(32, 5, padding="same", activation="relu"),
            layers.Conv2D(32, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2, strides=2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    opt = keras.optimizers.RMSprop(learning_rate=0.001, rho=0.9, epsilon=1e-8)
    m.compile(optimizer=opt, loss="categorical_crossentropy", metrics=["accuracy"])
    return m


def numpy_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ImageDataGenerator-style per-image affine warp in NumPy/SciPy (the reference's CPU-side augmentation)."""
    from scipy.ndimage import affine_transform

    out = np.empty_like(x)
    c = np.array([13.5, 13.5])
    for i in range(len(x)):
        a = np.deg2rad(rng.uniform(-10, 10))
        z = rng.uniform(0.9, 1.1)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / z
        shift = rng.uniform(-0.1, 0.1, 2) * 28
        out[i, :, :, 0] = affine_transform(x[i, :, :, 0], rot, offset=c - rot @ c - shift, order=1, mode="constant")
    return out


def fit_reference(x, y, xv, yv, epochs: int, target: float | None) -> dict:
    import keras

    from ensemble.search.cnn.model import one_hot

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.x = x.astype(np.float32)[..., None] / 255.0
            self.y = one_hot(y)
            self.rng = np.random.default_rng(0)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return int(np.ceil(len(self.x) / 86))

        def __getitem__(self, i: int):
            idx = self.order[i * 86 : (i + 1) * 86]
            return numpy_augment(self.x[idx], self.rng), self.y[idx]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.x))

    keras.utils.set_random_seed(0)
    model = reference_model()
    return _timed_fit(
        lambda cb, n: model.fit(
            Batches(),
            epochs=n,
            validation_data=(xv.astype(np.float32)[..., None] / 255.0, one_hot(yv)),
            callbacks=[cb],
            verbose=0,
        ),
        len(x),
        epochs,
        target,
        model.count_params(),
    )


def fit_ours(x, y, xv, yv, epochs: int, target: float | None) -> dict:
    import keras

    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.model import as_input, build_model, compile_model, one_hot

    keras.utils.set_random_seed(0)
    cfg = CnnConfig.from_json({**OURS, "epochs": epochs})
    model = build_model(cfg)
    compile_model(model, cfg, len(x))
    return _timed_fit(
        lambda cb, n: model.fit(
            as_input(x),
            one_hot(y),
            batch_size=cfg.batch_size,
            epochs=n,
            validation_data=(as_input(xv), one_hot(yv)),
            callbacks=[cb],
            verbose=0,
        ),
        len(x),
        epochs,
        target,
        model.count_params(),
    )


def _timed_fit(fit, n_images: int, epochs: int, target: float | None, params: int) -> dict:
    import keras

    marks: list[tuple[float, float, float]] = []  # (wall since start, train-only seconds of epoch, val acc)

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.e0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            now = time.perf_counter()
            marks.append((now - self.t0, now - self.e0, float(logs.get("val_accuracy", 0))))
            print(f"    epoch {epoch + 1}: {now - self.e0:.1f}s, val_accuracy {marks[-1][2]:.4f}", flush=True)
            if target is not None and marks[-1][2] >= target:
                self.model.stop_training = True

    fit(Clock(), epochs)
    steady = [m[1] for m in marks[1:]] or [marks[0][1]]
    reached = next((m[0] for m in marks if m[2] >= (target or 2)), None)
    return {
        "params": params,
        "images_per_second": n_images / float(np.median(steady)),
        "epochs": len(marks),
        "best_val_accuracy": max(m[2] for m in marks),
        "seconds_to_target": reached,
    }


def throughput_all(args: argparse.Namespace) -> None:
    """One subprocess per backend: images/s for ref and ours on N images, 2 epochs (second timed)."""
    rows = []
    print(f"CPU {machine_line()}")
    for backend in ("tensorflow", "torch", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, __file__, "--child", "--n", str(args.n)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{backend:<11} not available ({out.stderr.strip().splitlines()[-1] if out.stderr else '?'})")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((backend, r))
        print(
            f"{backend:<11} reference {r['ref']:7.0f} img/s   ours {r['ours']:7.0f} img/s   "
            f"ratio {r['ours'] / r['ref']:.2f}x"
        )
    if rows:
        best = max(rows, key=lambda t: t[1]["ours"])
        print(f"fastest backend for ours on this CPU: {best[0]}")


OPTIONS: list[dict] = [  # each measured in its own process (policies and thread pools do not leak)
    {"name": "float32, batch 128 (default)"},
    {"name": "mixed_bfloat16, batch 128", "policy": "mixed_bfloat16"},
    {"name": "float32, batch 128, jit_compile", "jit": True},
    {"name": "float32, batch 256", "batch": 256},
    {"name": "mixed_bfloat16, batch 256", "policy": "mixed_bfloat16", "batch": 256},
    {"name": "float32, batch 128, 1 inter-op + 2 intra-op threads", "threads": [2, 1]},
    {"name": "float32, batch 128, no augmentation layer", "cfg": {"rotation": 0, "zoom": 0, "shift": 0}},
    {"name": "float32, batch 128, no BatchNorm", "cfg": {"batch_norm": False}},
]


def options_all(args: argparse.Namespace) -> None:
    """Images/s of ours under each CPU option, in one run (reference: the default, measured first)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; flags: {', '.join(has) or 'no AVX-512'}")
    print(f"ours (quick CNN config), {args.n} images/epoch, median of epochs 2-3; ratio vs the first row")
    base = None
    for opt in OPTIONS:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if opt.get("threads"):
            env.update(TF_NUM_INTRAOP_THREADS=str(opt["threads"][0]), TF_NUM_INTEROP_THREADS=str(opt["threads"][1]))
        cmd = [sys.executable, __file__, "--option-child", json.dumps(opt), "--n", str(args.n)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{opt['name']:<55} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        ips = json.loads(out.stdout.strip().splitlines()[-1])["ips"]
        base = base or ips
        print(f"{opt['name']:<55} {ips:7.0f} img/s   {ips / base:.2f}x")


def option_child(args: argparse.Namespace) -> None:
    import keras

    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.model import as_input, build_model, compile_model, one_hot

    opt = json.loads(args.option_child)
    x, y, xv, yv = load_split()
    x, y = x[: args.n], y[: args.n]
    if opt.get("policy"):
        keras.mixed_precision.set_global_policy(opt["policy"])
    cfg = CnnConfig.from_json({**OURS, "batch_size": opt.get("batch", 128), "epochs": 3, **opt.get("cfg", {})})
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    compile_model(model, cfg, len(x))
    if opt.get("jit"):
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
    r = _timed_fit(
        lambda cb, n: model.fit(as_input(x), one_hot(y), batch_size=cfg.batch_size, epochs=n, callbacks=[cb],
                                verbose=0),
        len(x), 3, None, model.count_params(),
    )  # fmt: skip
    print(json.dumps({"ips": r["images_per_second"]}))


def child(args: argparse.Namespace) -> None:
    x, y, xv, yv = load_split()
    x, y = x[: args.n], y[: args.n]
    ref = fit_reference(x, y, xv[:500], yv[:500], 2, None)["images_per_second"]
    ours = fit_ours(x, y, xv[:500], yv[:500], 2, None)["images_per_second"]
    print(json.dumps({"ref": ref, "ours": ours}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--n", type=int, default=6000, help="images per epoch in --throughput-only")
    ap.add_argument("--ref-epochs", type=int, default=12)
    ap.add_argument(
        "--epochs",
        type=int,
        default=OURS["epochs"],
        help="ours: epochs the one-cycle schedule spans (default: %(default)s)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--options", action="store_true", help="images/s of ours under CPU options (bf16, jit, ...)")
    ap.add_argument("--option-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    if args.child:
        return child(args)
    if args.option_child:
        return option_child(args)
    if args.options:
        return options_all(args)
    if args.throughput_only:
        return throughput_all(args)
    import keras

    x, y, xv, yv = load_split()
    print(f"CPU {machine_line()}")
    print(f"backend {keras.backend.backend()}, train {len(x):,} images, val {len(xv):,}, target {TARGET}")
    print("  reference (Kaggle kernel):")
    ref = fit_reference(x, y, xv, yv, args.ref_epochs, TARGET)
    print(f"  ours ({args.epochs}-epoch one-cycle schedule):")
    ours = fit_ours(x, y, xv, yv, args.epochs, TARGET)
    for name, r in (("reference", ref), ("ours", ours)):
        t = (
            f"{r['seconds_to_target']:.0f}s"
            if r["seconds_to_target"]
            else f"not reached (best {r['best_val_accuracy']:.4f})"
        )
        print(f"{name:<10} {r['params']:>9,} params  {r['images_per_second']:7.0f} img/s  time-to-{TARGET}: {t}")
    print(f"throughput ratio ours/reference: {ours['images_per_second'] / ref['images_per_second']:.2f}x")
    if ref["seconds_to_target"] and ours["seconds_to_target"]:
        ratio = ours["seconds_to_target"] / ref["seconds_to_target"]
        print(f"time-to-target ratio ours/reference: {ratio:.2f} (goal <= 0.40: {'PASS' if ratio <= 0.4 else 'FAIL'})")


if __name__ == "__main__":
    from ensemble.quiet import filter_native_logs

    filter_native_logs()  # no TensorFlow start-up lines, here or in the per-backend children
    main()
