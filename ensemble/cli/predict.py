"""``ensemble predict``: a Kaggle submission from an ensemble folder."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict a test set with a built ensemble and write a Kaggle submission",
        description="Load runs/NAME/ensemble (refusing any artifact whose sha256 differs from manifest.json), "
        "predict with the recorded TTA views and weights under the current Keras backend, and write "
        "ImageId,Label atomically.",
    )
    p.add_argument("--ensemble", required=True, metavar="DIR", help="ensemble folder (runs/NAME/ensemble)")
    p.add_argument("--test", required=True, metavar="PATH", help="test CSV (.csv/.csv.gz) or dataset folder/zip")
    p.add_argument("--out", required=True, metavar="FILE", help="submission CSV to write")
    p.add_argument("--proba", metavar="FILE", help="also save the probabilities (float32 N x 10) as .npy")
    p.add_argument("--no-tta", action="store_true", help="identity view only (faster)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per batch (128)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter
    run_predict(
        args.ensemble,
        args.test,
        args.out,
        proba_path=args.proba,
        tta=not args.no_tta,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    return 0


@dataclass(frozen=True)
class Prediction:
    """What ``ensemble predict`` made: the labels written, the probabilities, the prediction time, the views."""

    labels: np.ndarray
    proba: np.ndarray
    seconds: float  # predicting only (not loading)
    views: list[str]


def run_predict(
    ensemble_dir: str | Path,
    test: str | Path,
    out: str | Path,
    *,
    proba_path: str | Path | None = None,
    tta: bool = True,
    batch_size: int = 128,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Prediction:
    """The ``ensemble predict`` pipeline: verify, load, predict, write the submission atomically."""
    from ensemble.combine.manifest import N_CLASSES
    from ensemble.combine.tta import IDENTITY
    from ensemble.data.load import read_test_images
    from ensemble.inference.predict import load_ensemble, predict_proba
    from ensemble.io import save_npy
    from ensemble.report.submission import write_submission

    t0 = time.perf_counter()
    ens = load_ensemble(ensemble_dir)
    images = read_test_images(test)
    import keras

    views = ens.views if tta else [IDENTITY]
    built = ens.manifest.keras.backend if ens.manifest.keras else "an unrecorded backend"
    say(
        f"ensemble {ens.folder}: {len(ens.members)} members, sha256 verified; TTA views {','.join(views)}; "
        f"Keras {keras.version()} backend {keras.backend.backend()} (built under {built})"
    )
    say(f"test {test}: {len(images):,} images")
    t1 = time.perf_counter()
    proba = predict_proba(ens, images, tta=tta, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t1
    labels = np.argmax(proba, axis=1)
    write_submission(out, labels)
    if proba_path:
        save_npy(proba_path, proba)
    counts = " ".join(f"{k}:{c}" for k, c in enumerate(np.bincount(labels, minlength=N_CLASSES)))
    say(f"wrote {out}: {len(labels):,} rows; predicted labels {counts}")
    if proba_path:
        say(f"wrote {proba_path}: probabilities float32 {proba.shape}")
    say(f"predicted in {seconds:.1f}s ({len(images) / seconds:,.0f} images/s), total {time.perf_counter() - t0:.1f}s")
    return Prediction(labels, proba, seconds, list(views))
