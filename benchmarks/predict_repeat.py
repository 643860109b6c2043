"""``ensemble predict`` on the real test set many times in a row, under the current Keras backend.

Prediction shares an ensemble's CNN members out among threads (see ``ensemble.combine.members``);
a model called from two threads at once crashes under JAX, sometimes only after many batches.
This script predicts the 28,000 Kaggle test images ``--times`` times with the product path
(``load_ensemble`` + ``predict_proba``, TTA views, two threads), and checks that every round
returns the same probabilities as the first. Prints the CPU model, the backend and each round's time.

The ensemble is ``--ensemble DIR`` (any built ensemble folder, whatever backend built it), or
else randomly initialised CNNs written like ``benchmarks/predict_throughput.py`` does
(``--members``, ``--views``, ``--filters``, ``--dense``), kept with ``--save DIR``:

    KERAS_BACKEND=torch python benchmarks/predict_repeat.py --times 1 --save /tmp/torch-ensemble
    KERAS_BACKEND=jax python benchmarks/predict_repeat.py --ensemble /tmp/torch-ensemble --times 20
    KERAS_BACKEND=jax python benchmarks/predict_repeat.py --ensemble runs/main/ensemble --test data/digit-recognizer

Exit status 1 if a round fails or differs from the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model
from predict_throughput import make_cnn, write_ensemble

from ensemble.combine.tta import CANDIDATES
from ensemble.errors import EnsembleError

REAL_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "digit-recognizer" / "test.csv.gz"


def random_ensemble(folder: Path, members: int, views: int, filters: list[int], dense: int) -> None:
    write_ensemble(folder, [make_cnn(filters, dense, seed=i) for i in range(members)], list(CANDIDATES[:views]))


def rounds(folder: Path, images: np.ndarray, times: int, batch_size: int) -> int:
    from ensemble.inference.predict import load_ensemble, predict_proba

    ens = load_ensemble(folder)
    cnns = sum(m.model is not None for m in ens.members)
    print(
        f"ensemble {folder}: {len(ens.members)} members ({cnns} CNNs), views {ens.views}, "
        f"built under {ens.manifest['keras']['backend']}"
    )
    first = None
    for i in range(times):
        t0 = time.perf_counter()
        try:
            p = predict_proba(ens, images, batch_size=batch_size)
        except EnsembleError as exc:
            print(f"round {i + 1}/{times}: FAILED: {exc}")
            return 1
        first = p if first is None else first
        diff = float(np.abs(p - first).max())
        labels = int(np.sum(p.argmax(1) != first.argmax(1)))
        print(
            f"round {i + 1}/{times}: {time.perf_counter() - t0:.1f}s, {len(images):,} images, "
            f"max |p - round 1| {diff:.2g}, labels differing {labels}",
            flush=True,
        )
        if diff > 1e-6:
            return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ensemble", type=Path, help="a built ensemble folder (default: random CNNs)")
    ap.add_argument("--test", default=str(REAL_TEST), help=f"test CSV or dataset folder (default {REAL_TEST})")
    ap.add_argument("--times", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--filters", default="16,32")
    ap.add_argument("--dense", type=int, default=64)
    ap.add_argument("--save", type=Path, help="write the random ensemble here and keep it")
    args = ap.parse_args()
    from ensemble.cli.predict import read_test

    print(
        f"CPU {cpu_model()} | Keras backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    images = read_test(args.test)
    if args.ensemble is not None:
        return rounds(args.ensemble, images, args.times, args.batch_size)
    filters = [int(f) for f in args.filters.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.save or Path(tmp)
        random_ensemble(folder, args.members, args.views, filters, args.dense)
        return rounds(folder, images, args.times, args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
