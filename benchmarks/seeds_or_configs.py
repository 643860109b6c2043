"""Benchmark: new seeds of the best configuration, or the next-best configuration, as the next member?

A finished run's two best CNN trials (ranked by their validation accuracy in the run's
leaderboard) are trained again on the run's ``train`` part, each with the same seeds and the same
epochs (``--epochs``, so the comparison is per equal epochs), with the product's training
(``fit_model``, the weights at the last epoch), and scored on the run's ``holdout`` part:

- each configuration's single-model errors (mean over seeds) and seconds per epoch;
- the 2-model soft votes best(s_i) + best(s_j), i < j (the reference: a new seed of the best),
  against best(s_i) + next(s_j) over every pair of seeds, and over the matched pairs i = j;
- the 3-model votes: best(s0, s1, s2) against best(s_i) + best(s_j) + next(s_k).

    python benchmarks/seeds_or_configs.py --run st1 --seeds 0 1 2 --epochs 8
"""

from __future__ import annotations

import csv
import json
import sys
from itertools import combinations, product
from pathlib import Path

import numpy as np
from machine import machine_line  # benchmarks/machine.py
from member_kit import errors, header, member_parser, row, run_parts, train_product, vote

from ensemble.search.cnn.config import CnnConfig


def best_two(root: Path) -> list[tuple[str, float, CnnConfig]]:
    """The run's two CNN trials with the highest validation accuracy: (name, val accuracy, config)."""
    with (root / "report" / "leaderboard.csv").open() as f:
        board = {r["model"]: float(r["val_accuracy"]) for r in csv.DictReader(f) if r["kind"] == "cnn"}
    trials = []
    for folder in sorted((root / "models" / "cnn").glob("trial-*")):
        name = f"cnn-{folder.name}"
        config = CnnConfig.from_json(json.loads((folder / "config.json").read_text()), extra="ignore")
        trials.append((name, board[name], config))
    trials.sort(key=lambda t: -t[1])
    if len(trials) < 2:
        raise SystemExit(f"{root}: fewer than 2 CNN trials with a leaderboard row")
    return trials[:2]


def pair_means(best: list[np.ndarray], nxt: list[np.ndarray], y: np.ndarray) -> dict[str, tuple[float, int]]:
    """Mean errors (and how many votes) of each kind of 2- and 3-model vote."""
    n = range(len(best))
    kinds = {
        "best + best (new seed), 2 models": [vote([best[i], best[j]]) for i, j in combinations(n, 2)],
        "best + next, 2 models, every pair": [vote([best[i], nxt[j]]) for i, j in product(n, n)],
        "best + next, 2 models, same seed": [vote([best[i], nxt[i]]) for i in n],
        "best x3, 3 models": [vote([best[i], best[j], best[k]]) for i, j, k in combinations(n, 3)],
        "best x2 + next, 3 models": [vote([best[i], best[j], nxt[k]]) for (i, j), k in product(combinations(n, 2), n)],
    }
    return {k: (float(np.mean([errors(p, y) for p in ps])), len(ps)) for k, ps in kinds.items() if ps}


def main(argv: list[str] | None = None) -> int:
    args = member_parser(__doc__, run_help="a finished run with 2+ CNN trials", epochs=8).parse_args(argv)

    from ensemble.search.cnn import model as cnn

    run, x, y, xh, yh = run_parts(args.run, args.max_train)
    trials = best_two(run.root)
    print(f"machine: {machine_line()}")
    print(f"run {args.run}: train {len(y):,} rows, holdout {len(yh):,}; {args.epochs} epochs each")
    probas: dict[str, list[np.ndarray]] = {"best": [], "next": []}
    seconds: dict[str, list[float]] = {"best": [], "next": []}
    for role, (name, val, config) in zip(probas, trials, strict=True):
        print(f"{role}: {name}, validation accuracy {val:.6f} in the run; config {json.dumps(config.to_json())}")
    for seed in args.seeds:  # the two configurations alternate, so the machine's drift hits both
        for role, (name, _, config) in zip(probas, trials, strict=True):
            cfg = config.replace(epochs=args.epochs)
            model, took = train_product(cfg, x, y, seed, f"seed {seed} {role}")
            probas[role].append(cnn.predict_proba(model, xh))
            seconds[role].append(took / args.epochs)
            print(f"  seed {seed} {role} ({name}): {errors(probas[role][-1], yh)} errors, {took:.0f}s", flush=True)
    report(probas, seconds, trials, yh)
    print(f"machine at the end: {machine_line()}")
    return 0


def report(probas: dict, seconds: dict, trials: list, yh: np.ndarray) -> None:
    """The table: single models per configuration, then the votes; ratio against best + best."""
    n = len(yh)
    votes = pair_means(probas["best"], probas["next"], yh)
    ref = votes.get("best + best (new seed), 2 models", (None, 0))[0]
    print(f"\n{header()}  per seed / votes")
    for role, (name, _, _) in zip(probas, trials, strict=True):
        per_seed = [errors(p, yh) for p in probas[role]]
        note = f"{' '.join(map(str, per_seed))}; {np.mean(seconds[role]):.0f} s/epoch"
        print(row(f"{role} ({name}), one seed (mean)", float(np.mean(per_seed)), n, ref, note))
    for kind, (mean, count) in votes.items():
        print(row(kind, mean, n, ref, f"mean of {count}"))
    sb, sn = np.mean(seconds["best"]), np.mean(seconds["next"])
    print(f"seconds per epoch (mean): best {sb:.0f}, next {sn:.0f} (next / best {sn / sb:.2f})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
