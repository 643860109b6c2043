"""``ensemble predict``: a Kaggle submission from an ensemble folder."""

from __future__ import annotations

import argparse
import sys


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
    from ensemble.predict import run_predict

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
