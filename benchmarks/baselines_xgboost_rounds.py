"""Validation accuracy of XGBoost versus boosting rounds, and the time it takes, on a run's split.

Shows what the 2-core default of ``ensemble baselines`` trades away: e.g.

    python benchmarks/baselines_xgboost_rounds.py --data /work/shared/data/digit-recognizer \
        --rounds 700 --learning-rate 0.12 --max-depth 7 --threads 2

prints the fit time and the validation accuracy every 50 rounds (same preprocessing as the
``xgboost`` search space: pixels / 255 with 40 PCA components appended).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="Kaggle data folder")
    ap.add_argument("--rows", type=int, default=0, help="training rows (0: the whole training part)")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--learning-rate", type=float, default=0.25)
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--subsample", type=float, default=0.6)
    ap.add_argument("--colsample", type=float, default=0.3)
    ap.add_argument("--pca", type=int, default=40, help="PCA components appended to the pixels (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    os.environ.setdefault("ENSEMBLE_RUNS", tempfile.mkdtemp(prefix="bench-runs-"))
    import xgboost as xgb

    from ensemble.data.runs import open_run
    from ensemble.search.baselines.preprocess import fit_preprocessor
    from ensemble.search.baselines.study import subsample

    run = open_run("bench-xgboost", data=args.data, say=lambda _m: None)
    (xt, yt), (xv, yv) = run.part("train"), run.part("val")
    rows = subsample(yt, args.rows, seed=0)
    pre = fit_preprocessor(xt[rows], pca_components=args.pca, pca_append=True)
    ft, fv = pre.transform(xt[rows]), pre.transform(xv)
    model = xgb.XGBClassifier(
        n_estimators=args.rounds,
        max_depth=args.max_depth,
        learning_rate=args.learning_rate,
        subsample=args.subsample,
        colsample_bytree=args.colsample,
        max_bin=64,
        tree_method="hist",
        n_jobs=args.threads,
        eval_metric="merror",
    )
    t0 = time.perf_counter()
    model.fit(ft, yt[rows], eval_set=[(fv, yv)], verbose=False)
    seconds = time.perf_counter() - t0
    curve = model.evals_result()["validation_0"]["merror"]
    print(f"rows {len(rows):,}  threads {args.threads}  fit {seconds:.0f}s")
    for r in range(49, len(curve), 50):
        print(f"rounds {r + 1:>5}  val_accuracy {1 - curve[r]:.4f}")


if __name__ == "__main__":
    main()
