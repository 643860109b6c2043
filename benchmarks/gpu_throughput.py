"""Benchmark: training images/s on a GPU, by model, batch size, data placement and precision.

    KERAS_BACKEND=jax python benchmarks/gpu_throughput.py [--n 16384]

Models: the classic Kaggle kernel's network (see train_throughput.py) without augmentation and
with its augmentation moved into the graph (ensemble.search.cnn.augment.RandomAffine), and ours
(ensemble.search.cnn.config.DEFAULT) in float32 and mixed float16. Data: random pixels (throughput does not
depend on them). "device": arrays placed on the GPU once (ensemble.search.cnn.model.on_device); "host": NumPy
arrays that Keras copies per batch. Figure: the best of epochs 2-3 (epoch 1 compiles).
On a machine without a GPU it runs on the CPU and says so (slowly: use a small --n).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384, help="images per epoch")
    args = ap.parse_args()
    import keras
    from train_throughput import reference_model

    from ensemble.search.cnn import model as cnn
    from ensemble.search.cnn.config import DEFAULT

    n = args.n
    x = np.random.default_rng(0).integers(0, 255, (n, 28, 28, 1)).astype(np.float32)
    y = cnn.one_hot(np.random.default_rng(1).integers(0, 10, n))
    xd, yd = cnn.on_device(x), cnn.on_device(y)
    print(f"backend {keras.backend.backend()}, device {cnn.device_name()}, {n:,} images per epoch", flush=True)

    def ours(batch: int, mixed: bool = False):
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
        c = DEFAULT.replace(batch_size=batch, epochs=3)
        m = cnn.build_model(c)
        cnn.compile_model(m, c, n)
        return m

    def reference(augment: bool):
        m = reference_model(in_graph_augment=True)
        if not augment:  # drop RandomAffine, keep the /255
            kept = [la for la in m.layers if type(la).__name__ != "RandomAffine"]
            m = keras.Sequential([keras.Input((28, 28, 1)), *kept])
            m.compile(keras.optimizers.RMSprop(1e-3), "categorical_crossentropy", metrics=["accuracy"])
        return m

    cases = [
        ("reference, no aug", 512, lambda: reference(False)),
        ("reference + RandomAffine", 86, lambda: reference(True)),
        ("reference + RandomAffine", 512, lambda: reference(True)),
        ("ours (default cfg)", 128, lambda: ours(128)),
        ("ours (default cfg)", 512, lambda: ours(512)),
        ("ours mixed16", 512, lambda: ours(512, True)),
    ]
    for name, batch, make in cases:
        for where, (xa, ya) in (("device", (xd, yd)), ("host", (x, y))):
            if where == "host" and batch != 512:
                continue
            model, best = make(), 0.0
            for epoch in range(3):
                t = time.perf_counter()
                model.fit(xa, ya, batch_size=batch, epochs=1, verbose=0)
                if epoch:
                    best = max(best, n / (time.perf_counter() - t))
            print(f"{name:<26} batch {batch:>4} data on {where:<6} {best:9,.0f} img/s", flush=True)
            keras.mixed_precision.set_global_policy("float32")
            keras.backend.clear_session()


if __name__ == "__main__":
    main()
