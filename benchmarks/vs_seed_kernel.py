"""Benchmark: a finished ``ensemble run`` versus the classic Kaggle Keras kernel, on the run's own split and holdout.

The reference ("seed kernel") is the Digit Recognizer kernel as its users run it: 2x Conv32 5x5, max-pool,
dropout .25; 2x Conv64 3x3, max-pool, dropout .25; Dense 256, dropout .5; softmax. RMSprop(lr 1e-3, rho .9,
eps 1e-8), categorical cross-entropy, batch 86, ReduceLROnPlateau(val_accuracy, patience 3, factor .5,
min_lr 1e-5), ImageDataGenerator-style augmentation (rotation 10, zoom .1, shifts .1) applied per batch on
the CPU, inputs /255, up to 30 epochs (model and augmentation: benchmarks/train_throughput.py).

Data: exactly the rows the run's members see. The kernel trains on the run's ``train`` part and watches
its ``val`` part (the kernel's own 90/10 split, and what ReduceLROnPlateau monitors); both models are
scored once on the run's ``holdout`` part, which neither ever trained on or was selected with.

Time: the kernel gets the run's wall time (runs/NAME/stages.json: a ``wall_seconds`` key if present,
else the stages' ``seconds`` summed, counting the CNN search and the baselines, which run side by side
from one start, as the longer of the two) or ``--seconds S``. It trains epoch by epoch and stops after
30 epochs (``--epochs-cap``) or when the next epoch would end past S (estimated from the median epoch
so far, the first one, which includes graph tracing, left out once there are others). The first epoch
always runs. The clock starts before the model is built and stops after the holdout predictions.

The product's model is the run's final model (runs/NAME/report/summary.json ``final_model``; its
holdout probabilities are found the way ``ensemble report`` scored them), or ``--final-proba PATH``.
It wins when it makes strictly fewer holdout errors; the exact McNemar test says whether the
difference is significant at 5%. Results: runs/NAME/report/vs_seed_kernel.json and the kernel's
holdout probabilities runs/NAME/report/seed_kernel_proba_holdout.npy (``--reuse`` skips training).

    python benchmarks/vs_seed_kernel.py --run quick                 # after: ensemble run --run quick --preset quick
    python benchmarks/vs_seed_kernel.py --run quick --reuse --require-win

Exit code 0 whatever the outcome (it is a measurement); 1 with --require-win when the product does not
win; 2 on a usage or data error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from machine import cpu_model  # benchmarks/machine.py
from train_throughput import numpy_augment, reference_model  # the kernel, as train_throughput trains it

if TYPE_CHECKING:
    from ensemble.data.runs import Run

BENCH = Path(__file__).resolve().parent
KERNEL_PROBA = "seed_kernel_proba_holdout.npy"
RESULT_JSON = "vs_seed_kernel.json"
BATCH = 86


def cpu_info() -> tuple[str, int, int]:
    """CPU model name (lscpu, else /proc/cpuinfo), logical cores, and cores this process may use."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpu_model(), os.cpu_count() or 1, usable


def run_wall_seconds(root: Path) -> float | None:
    """The run's wall time from stages.json (None when the run has no stages.json)."""
    from ensemble.io import read_json

    f = root / "stages.json"
    if not f.is_file():
        return None
    data = read_json(f)
    if data.get("wall_seconds") is not None:
        return float(data["wall_seconds"])
    secs = {k: float(v.get("seconds") or 0.0) for k, v in data.get("stages", {}).items()}
    search = max(secs.pop("cnn_search", 0.0), secs.pop("baselines", 0.0))  # run side by side from one start
    return (search + sum(secs.values())) or None


def final_model_proba(run: Run, final_proba: str | None, storage: str | None) -> tuple[str, np.ndarray, str]:
    """(name, holdout probabilities, where they came from) of the product's final model."""
    from ensemble.errors import UsageError
    from ensemble.io import read_json

    if final_proba:
        f = Path(final_proba)
        name = "/".join(f.parts[-3:-1]) if f.name == "proba_holdout.npy" else f.stem  # e.g. cnn/trial-0007
        return name or "final", np.load(f), final_proba
    summary_path = run.path("report", "summary.json")
    if not summary_path.is_file():
        raise UsageError(
            f"{summary_path} not found: run `ensemble report --run {run.name}` first, or pass --final-proba PATH"
        )
    summary = read_json(summary_path)
    name = summary["final_model"]
    from ensemble.report.summary import collect

    entries = collect(run, storage_url=storage, top_cnn=10**6).entries
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        raise UsageError(f"final model '{name}' of {summary_path} is no longer in run '{run.name}'; rerun the report")
    p = entry.holdout()
    acc = float((p.argmax(1) == run.part("holdout")[1]).mean())
    if abs(acc - float(summary.get("holdout_accuracy", acc))) > 1e-9:
        print(f"WARNING: {name} scores {acc:.6f} on the holdout now, the report said {summary['holdout_accuracy']}")
    return name, p, f"{summary_path} -> {name}"


def subsample(x: np.ndarray, y: np.ndarray, rows: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` random training rows (all of them when None or more than there are)."""
    if rows is None or rows >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:rows])
    return x[idx], y[idx]


def kernel_batches(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """A Keras PyDataset of augmented batches of 86, reshuffled every epoch, augmented on the CPU."""
    import keras

    from ensemble.search.cnn.model import one_hot

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.x = x.astype(np.float32).reshape(-1, 28, 28, 1) / 255.0
            self.y = one_hot(y)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(self.x))

        def __len__(self) -> int:
            return int(np.ceil(len(self.x) / BATCH))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * BATCH : (i + 1) * BATCH]
            return numpy_augment(self.x[idx], self.rng), self.y[idx]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.x))

    return Batches()


def budget_clock(t0: float, seconds: float, cap: int, log: list[dict[str, Any]]) -> Any:
    """Callback: prints each epoch, and stops when the next epoch would end past ``t0 + seconds``."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.e0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            logs = logs or {}
            lr = logs.get("learning_rate")
            if lr is None:
                lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            row = {"epoch": epoch + 1, "seconds": round(now - self.e0, 2), "val_accuracy": float(logs["val_accuracy"])}
            log.append({**row, "learning_rate": float(lr)})
            durs = [r["seconds"] for r in log]
            est = float(np.median(durs[1:] if len(durs) > 1 else durs))
            used = now - t0
            print(
                f"  epoch {epoch + 1:>2}/{cap}: {row['seconds']:6.1f}s  val_accuracy {row['val_accuracy']:.4f}  "
                f"lr {float(lr):.2g}  (elapsed {used:.0f}s of {seconds:.0f}s)",
                flush=True,
            )
            if epoch + 1 < cap and used + est > seconds:
                print(f"  stop: the next epoch (~{est:.1f}s) would end past {seconds:.0f}s", flush=True)
                self.model.stop_training = True

    return Clock()


def train_kernel(run: Run, args: argparse.Namespace, seconds: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the seed kernel within ``seconds``; its holdout probabilities and what it did."""
    import keras

    from ensemble.search.cnn.model import one_hot

    x, y = subsample(*run.part("train"), args.rows, args.seed)
    xv, yv = run.part("val")
    xh = run.part("holdout")[0]
    print(f"seed kernel: train {len(y):,} rows, val {len(yv):,}, up to {args.epochs_cap} epochs in {seconds:.0f}s")
    t0 = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = reference_model()
    log: list[dict[str, Any]] = []
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", patience=3, factor=0.5, min_lr=1e-5)
    model.fit(
        kernel_batches(x, y, args.seed),
        epochs=args.epochs_cap,
        validation_data=(xv.astype(np.float32).reshape(-1, 28, 28, 1) / 255.0, one_hot(yv)),
        callbacks=[plateau, budget_clock(t0, seconds, args.epochs_cap, log)],
        verbose=0,
    )
    train_s = time.perf_counter() - t0
    p = model.predict(xh.astype(np.float32).reshape(-1, 28, 28, 1) / 255.0, batch_size=512, verbose=0)
    info = {
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(train_s, 2),
        "epochs": len(log),
        "epochs_cap": args.epochs_cap,
        "budget_seconds": round(seconds, 2),
        "n_train": len(y),
        "n_val": len(yv),
        "params": model.count_params(),
        "backend": keras.backend.backend(),
        "epoch_log": log,
    }
    return np.asarray(p, np.float32), info


def load_reused(run: Run) -> tuple[np.ndarray, dict[str, Any]]:
    """The kernel's saved holdout probabilities and training record (``--reuse``)."""
    from ensemble.errors import UsageError
    from ensemble.io import read_json

    j, f = run.path("report", RESULT_JSON), run.path("report", KERNEL_PROBA)
    if not (j.is_file() and f.is_file()):
        raise UsageError(f"--reuse: {j} or {f} is missing; run once without --reuse")
    saved = read_json(j)
    if saved.get("data_fingerprint") != run.meta["data"]["fingerprint"]:
        raise UsageError(f"--reuse: {j} was made from other data than run '{run.name}'; run without --reuse")
    print(f"seed kernel: reusing {f} ({saved['kernel']['epochs']} epochs, {saved['kernel']['wall_seconds']}s)")
    return np.load(f), saved["kernel"]


def compare(y: np.ndarray, product: np.ndarray, kernel: np.ndarray, names: tuple[str, str]) -> dict[str, Any]:
    """Holdout accuracy and errors of both, and the McNemar test (a = product, b = kernel)."""
    from ensemble.errors import UsageError
    from ensemble.report.stats import mcnemar, mcnemar_words

    for what, p in (("product", product), ("seed kernel", kernel)):
        if p.shape != (len(y), 10):
            raise UsageError(f"{what}: holdout probabilities have shape {p.shape}, the holdout has {len(y)} rows")
    pa, pb = product.argmax(1), kernel.argmax(1)
    test = mcnemar(y, pa, pb)
    errors = {"product": int((pa != y).sum()), "kernel": int((pb != y).sum())}
    return {
        "n_holdout": len(y),
        "product_accuracy": float((pa == y).mean()),
        "kernel_accuracy": float((pb == y).mean()),
        "product_errors": errors["product"],
        "kernel_errors": errors["kernel"],
        "mcnemar": {**asdict(test), "words": mcnemar_words(test, *names)},
        "product_wins": errors["product"] < errors["kernel"],
        "significant_5pct": test.p_value < 0.05,
    }


def print_result(res: dict[str, Any]) -> None:
    """Table, McNemar line and verdict."""
    c = res["comparison"]
    labels = {
        "product": f"product: {res['product']['model']}",
        "kernel": f"seed kernel ({res['kernel']['epochs']} epochs)",
    }
    width = max(map(len, labels.values())) + 2
    print(f"\n{'model':<{width}}{'wall s':>9}{'holdout acc':>13}{'errors':>8}")
    for key, label in labels.items():
        wall = res[key]["wall_seconds"]
        w = "?" if wall is None else f"{float(wall):.1f}"
        print(f"{label:<{width}}{w:>9}{c[key + '_accuracy']:>13.4f}{c[key + '_errors']:>8}")
    print(f"McNemar: {c['mcnemar']['words']}")
    verdict = "product wins" if c["product_wins"] else "product does not win"
    sig = "significant" if c["significant_5pct"] else "not significant"
    print(
        f"{verdict}: {c['product_errors']} vs {c['kernel_errors']} errors on {c['n_holdout']:,} holdout digits; "
        f"the difference is {sig} at 5% (p = {c['mcnemar']['p_value']:.3g})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, metavar="NAME", help="the finished run runs/NAME to compare with")
    ap.add_argument("--runs-dir", metavar="DIR", help="folder holding runs (default $ENSEMBLE_RUNS or ./runs)")
    ap.add_argument("--data", metavar="PATH", help="the run's data, if it moved (default: as recorded in the run)")
    ap.add_argument("--storage", metavar="URL", help="the run's Optuna storage URL (default: its optuna.journal)")
    ap.add_argument("--seconds", type=float, metavar="S", help="kernel time budget (default: the run's wall time)")
    ap.add_argument("--epochs-cap", type=int, default=30, metavar="N", help="most kernel epochs (default 30)")
    ap.add_argument("--rows", type=int, metavar="N", help="train the kernel on N random rows of the train part")
    ap.add_argument("--final-proba", metavar="PATH", help="the product's holdout probabilities (.npy) to compare, "
                    "instead of the final model of runs/NAME/report/summary.json")  # fmt: skip
    ap.add_argument("--reuse", action="store_true", help="reuse the kernel's saved results instead of training")
    ap.add_argument("--require-win", action="store_true", help="exit 1 when the product does not win")
    ap.add_argument("--seed", type=int, default=0, help="kernel seed: weights, shuffling, augmentation (0)")
    ap.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="Keras backend ($KERAS_BACKEND)")
    args = ap.parse_args(argv)
    if args.epochs_cap < 1 or (args.rows or 1) < 1 or (args.seconds if args.seconds is not None else 1) <= 0:
        ap.error("--epochs-cap and --rows must be >= 1, --seconds > 0")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Open the run, get both models' holdout probabilities, compare, save; returns the result."""
    from ensemble.data.runs import open_run, run_root
    from ensemble.errors import UsageError
    from ensemble.io import write_json

    if not (run_root(args.run) / "run.json").is_file():  # open_run would create it
        raise UsageError(f"no run '{args.run}' in {run_root(args.run).parent}")
    run = open_run(args.run, data=args.data)
    product_wall = run_wall_seconds(run.root)
    seconds = args.seconds if args.seconds is not None else product_wall
    if seconds is None and not args.reuse:
        raise UsageError(f"{run.path('stages.json')} not found (not made by `ensemble run`): pass --seconds S")
    cpu, cores, usable = cpu_info()
    print(f"CPU: {cpu}, {cores} cores ({usable} usable by this process)")
    name, product, source = final_model_proba(run, args.final_proba, args.storage)
    print(f"run {run.name}: product's final model {name} ({source})")
    if args.reuse:
        kernel, info = load_reused(run)
    else:
        kernel, info = train_kernel(run, args, float(seconds or 0))
        info["budget_from"] = "--seconds" if args.seconds is not None else "stages.json"
    y = run.part("holdout")[1]
    comparison = compare(y, product, kernel, (f"the product ({name})", "the seed kernel"))
    result = {
        "run": run.name,
        "data_fingerprint": run.meta["data"]["fingerprint"],
        "cpu": {"model": cpu, "cores": cores, "usable": usable},
        "product": {"model": name, "source": source, "wall_seconds": product_wall},
        "kernel": info,
        "comparison": comparison,
    }
    run.path("report").mkdir(parents=True, exist_ok=True)
    np.save(run.path("report", KERNEL_PROBA), kernel.astype(np.float32))
    write_json(run.path("report", RESULT_JSON), result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs_dir:
        os.environ["ENSEMBLE_RUNS"] = args.runs_dir
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    from ensemble.errors import EnsembleError

    try:
        result = measure(args)
    except EnsembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_result(result)
    return 1 if args.require_win and not result["comparison"]["product_wins"] else 0


if __name__ == "__main__":
    sys.path.insert(1, str(BENCH.parent))  # this checkout's package when it is not installed
    from ensemble.quiet import filter_native_logs

    filter_native_logs()  # no TensorFlow start-up lines from the kernel's training
    sys.exit(main())
