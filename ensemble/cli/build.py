"""``ensemble build``: soft-voting ensemble of the best CNN trials, with TTA."""

from __future__ import annotations

import argparse
import os
import sys

from ensemble.cli.common import add_artifacts_arg, add_run_args, add_storage_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="ensemble the top-k CNN trials (soft voting, greedy weights, TTA) into runs/NAME/ensemble",
        description="Choose the K best completed CNN trials by validation accuracy (log loss breaks ties), pick "
        "TTA views and voting weights on validation, report holdout accuracy, and write runs/NAME/ensemble/ "
        "(manifest.json with sha256 of every artifact, member models, val/holdout/test probabilities).",
    )
    add_run_args(p)
    add_storage_arg(p)
    add_artifacts_arg(p)
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="number of best CNN trials to consider (5)")
    p.add_argument(
        "--weights",
        choices=("equal", "greedy"),
        default="greedy",
        help="equal weights, or Caruana greedy forward selection with replacement on validation, "
        "scored by --greedy-metric (greedy)",
    )
    p.add_argument(
        "--tta",
        default="auto",
        metavar="auto|none|LIST",
        help="test-time augmentation: auto keeps each candidate view only if it improves validation log loss "
        "or accuracy by more than one paired standard error (a gain noise could produce is refused); none; "
        "or a comma list of identity, shift:DX:DY, rot:DEG, zoom:F (auto)",
    )
    p.add_argument(
        "--include-baselines",
        action="store_true",
        help="also offer the best trial of each baseline-* study to the weights (no TTA; its saved model "
        "files are copied so predict can run it on other test sets)",
    )
    p.add_argument("--refit", action="store_true", help="retrain kept CNNs on train+val for their best epoch count")
    p.add_argument("--seed", type=int, default=0, help="seed for greedy tie-breaking and refits (0)")
    p.add_argument("--greedy-iters", type=int, default=50, metavar="N", help="greedy selection rounds (50)")
    p.add_argument(
        "--greedy-metric",
        choices=("logloss", "accuracy"),
        default="accuracy",
        help="what greedy selection optimises on validation: accuracy (the Kaggle metric; log loss breaks ties, "
        "as AutoGluon selects on its eval metric) or log loss (accuracy)",
    )
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per prediction batch (128)")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter
    from ensemble.data.runs import check_name, runs_dir
    from ensemble.locks import run_lock

    with run_lock(runs_dir(), check_name(args.run)):  # refused at once while another writer has the run
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    import time

    from ensemble.combine.build import build_ensemble
    from ensemble.data.runs import open_run

    run = open_run(args.run, data=args.data)
    t0 = time.perf_counter()
    m = build_ensemble(
        run,
        top_k=args.top_k,
        weights=args.weights,
        tta=args.tta,
        include_baselines=args.include_baselines,
        refit=args.refit,
        seed=args.seed,
        n_iter=args.greedy_iters,
        greedy_metric=args.greedy_metric,
        batch_size=args.batch_size,
        storage_url=args.storage,
        progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - t0
    gain = m.tta.gain_val or {}
    if "identity" in gain and "tta" in gain:
        g0, g1 = gain["identity"], gain["tta"]
        print(
            f"TTA gain on validation: accuracy {g0.accuracy:.4f} -> {g1.accuracy:.4f}, "
            f"log loss {g0.logloss:.4f} -> {g1.logloss:.4f}"
        )
    print(f"{'':36} {'val acc':>8} {'val loss':>9} {'holdout acc':>12} {'holdout loss':>13}")
    for name, r in (m.metrics or {}).items():
        label = name + (f" ({r.member})" if r.member else "")
        va, vl = (f"{r.val.accuracy:.4f}", f"{r.val.logloss:.4f}") if r.val else ("-", "-")
        h = r.holdout
        print(f"{label[:36]:36} {va:>8} {vl:>9} {h.accuracy:>12.4f} {h.logloss:>13.4f}")
    print(f"wrote {run.path('ensemble', 'manifest.json')} ({len(m.members)} members) in {seconds:.1f}s")
    return 0
