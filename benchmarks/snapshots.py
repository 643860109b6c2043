"""Benchmark: snapshot members and SWA from one cyclic training, against the product's one-cycle training.

The quick space's default CNN is trained on a run's ``train`` part twice per seed, from the same
initial weights and for the same epochs, and scored on the run's ``holdout`` part:

- **raw (one-cycle)**, the reference: the product's training (``fit_model``, the one-cycle schedule
  ``compile_model`` sets), the weights at the last epoch;
- **cyclic**: one training with a cosine schedule restarted ``--cycles`` times (peak = the one-cycle's
  peak, the config's learning rate; floor = the same 1e-3 of it), the weights saved at each
  cycle's end. From it: the last snapshot alone, the soft vote of the last 2, 3, ... snapshots,
  and **SWA**: the snapshots' trainable weights averaged, then the BatchNorm statistics recomputed
  (reset, then an exact running mean over one pass of the train part in training mode).

Then the votes of 2 and 3 one-cycle seeds: what the same time as 2 or 3 trainings buys today.

    python benchmarks/snapshots.py --run q3 --seeds 0 1 2 --epochs 8 --cycles 4
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_line  # benchmarks/machine.py
from member_kit import (
    errors,
    header,
    mean_vote_errors,
    member_parser,
    quick_config,
    row,
    run_parts,
    train_product,
    vote,
)

from ensemble.search.cnn.config import CnnConfig


def train_cyclic(config: CnnConfig, x: np.ndarray, y: np.ndarray, seed: int, cycles: int) -> tuple[Any, list]:
    """One training with a restarted cosine schedule; (model, [trainable + all weights at each cycle's end])."""
    import keras

    from ensemble.search.cnn import model as cnn

    epochs = config.epochs
    if epochs % cycles:
        raise SystemExit(f"--epochs {epochs} is not a multiple of --cycles {cycles}")
    keras.utils.set_random_seed(seed)  # the same initial weights as fit_model's training of this seed
    model = cnn.build_model(config, momentum=cnn.bn_momentum(len(x), config))
    cnn.compile_model(model, config, len(x))
    per_cycle = math.ceil(len(x) / config.batch_size) * epochs // cycles
    peak = float(config.learning_rate)
    sched = keras.optimizers.schedules.CosineDecayRestarts(peak, per_cycle, t_mul=1.0, m_mul=1.0, alpha=1e-3)
    opt = model.optimizer
    cyclic = opt.__class__.from_config({**opt.get_config(), "learning_rate": sched})
    model.compile(optimizer=cyclic, loss=model.loss, metrics=["accuracy"])
    snaps: list[tuple[list, list]] = []
    t0 = time.perf_counter()

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            lr = float(keras.ops.convert_to_numpy(sched(self.model.optimizer.iterations - 1)))
            acc, loss = logs["accuracy"], logs["loss"]
            line = f"    seed {seed} cyclic epoch {epoch + 1}/{epochs}: accuracy {acc:.4f}, loss {loss:.4f}"
            print(f"{line}, last lr {lr:.2e} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if (epoch + 1) % (epochs // cycles) == 0:
                trainable = [v.numpy().copy() for v in self.model.trainable_variables]
                snaps.append((trainable, [w.copy() for w in self.model.get_weights()]))

    x_in, y_in = cnn.on_device(cnn.as_input(x)), cnn.on_device(cnn.one_hot(y))
    model.fit(x_in, y_in, batch_size=config.batch_size, epochs=epochs, callbacks=[Snapshot()], verbose=0)
    return model, snaps


def bn_layers(model: Any) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def recompute_bn(model: Any, x: np.ndarray, batch_size: int = 500) -> float:
    """Reset BatchNorm's statistics and set them to the mean over the train part's batches (training mode).

    Returns the largest change of a moving mean, to show the statistics were really recomputed.
    """
    from ensemble.search.cnn import model as cnn

    layers = bn_layers(model)
    before = [layer.moving_mean.numpy().copy() for layer in layers]
    saved = [layer.momentum for layer in layers]
    for layer, mean in zip(layers, before, strict=True):
        layer.moving_mean.assign(np.zeros_like(mean))
        layer.moving_variance.assign(np.ones_like(layer.moving_variance.numpy()))
    x_in = cnn.as_input(x)
    for k, start in enumerate(range(0, len(x_in), batch_size), start=1):
        for layer in layers:
            layer.momentum = (k - 1) / k  # moving = the exact mean of the k batch statistics so far
        model(x_in[start : start + batch_size], training=True)  # eager: each call reads the momentum
    for layer, momentum in zip(layers, saved, strict=True):
        layer.momentum = momentum
    return max(float(np.abs(layer.moving_mean.numpy() - b).max()) for layer, b in zip(layers, before, strict=True))


def swa_probas(model: Any, snaps: list, x: np.ndarray, xh: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """SWA of ``snaps``: (probas with the last snapshot's BN stats, probas with recomputed ones, max change)."""
    from ensemble.search.cnn import model as cnn

    model.set_weights(snaps[-1][1])
    for i, var in enumerate(model.trainable_variables):
        var.assign(np.mean([s[0][i] for s in snaps], axis=0))
    stale = cnn.predict_proba(model, xh)
    change = recompute_bn(model, x)
    return stale, cnn.predict_proba(model, xh), change


def one_seed(config: CnnConfig, parts: tuple, seed: int, cycles: int) -> dict[str, Any]:
    """Both trainings of one seed; every model's holdout probabilities and the trainings' seconds."""
    from ensemble.search.cnn import model as cnn

    x, y, xh, yh = parts
    ref, ref_s = train_product(config, x, y, seed, f"seed {seed} one-cycle")
    out: dict[str, Any] = {"raw": cnn.predict_proba(ref, xh), "raw_s": ref_s}
    t0 = time.perf_counter()
    model, snaps = train_cyclic(config, x, y, seed, cycles)
    out["cyclic_s"] = time.perf_counter() - t0
    out["snaps"] = []
    for _, weights in snaps:
        model.set_weights(weights)
        out["snaps"].append(cnn.predict_proba(model, xh))
    snap_errs = ", ".join(str(errors(p, yh)) for p in out["snaps"])
    print(
        f"  seed {seed}: raw {errors(out['raw'], yh)} errors ({ref_s:.0f}s); cyclic snapshots {snap_errs} "
        f"({out['cyclic_s']:.0f}s)",
        flush=True,
    )
    for k in swa_sizes(cycles):
        t0 = time.perf_counter()
        out[f"swa{k}_stale"], out[f"swa{k}"], change = swa_probas(model, snaps[-k:], x, xh)
        print(
            f"  seed {seed}: SWA of the last {k} snapshots {errors(out[f'swa{k}'], yh)} errors (BN pass "
            f"{time.perf_counter() - t0:.0f}s, largest moving-mean change {change:.3g}), with the last snapshot's "
            f"BN statistics {errors(out[f'swa{k}_stale'], yh)}",
            flush=True,
        )
    return out


def swa_sizes(cycles: int) -> list[int]:
    """SWA over the last half of the snapshots and over all of them."""
    return sorted({min(cycles, max(2, cycles // 2)), cycles})


def report(results: list[dict[str, Any]], yh: np.ndarray, cycles: int) -> None:
    """The table: per-seed errors, their mean, and the ratio of mean errors against raw one-cycle."""
    n = len(yh)
    kinds: dict[str, list] = {"raw, one-cycle (reference)": [r["raw"] for r in results]}
    kinds["last snapshot alone"] = [r["snaps"][-1] for r in results]
    for k in range(2, cycles + 1):
        kinds[f"snapshot vote, last {k}"] = [vote(r["snaps"][-k:]) for r in results]
    for k in swa_sizes(cycles):
        kinds[f"SWA of the last {k}, BN recomputed"] = [r[f"swa{k}"] for r in results]
        kinds[f"SWA of the last {k}, last snapshot's BN"] = [r[f"swa{k}_stale"] for r in results]
    ref = float(np.mean([errors(p, yh) for p in kinds["raw, one-cycle (reference)"]]))
    print(f"\n{header()}  per seed")
    for name, ps in kinds.items():
        per_seed = [errors(p, yh) for p in ps]
        print(row(name + " (mean)", float(np.mean(per_seed)), n, ref, " ".join(map(str, per_seed))))
    for k in range(2, len(results) + 1):
        mean, count = mean_vote_errors(kinds["raw, one-cycle (reference)"], k, yh)
        print(row(f"raw one-cycle, vote of {k} seeds ({k} trainings)", mean, n, ref, f"mean of {count}"))
    raw_s, cyc_s = np.mean([r["raw_s"] for r in results]), np.mean([r["cyclic_s"] for r in results])
    print(f"seconds per training (mean): one-cycle {raw_s:.0f}, cyclic {cyc_s:.0f} ({cyc_s / raw_s:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    ap = member_parser(__doc__, run_help="a run folder name (its split is used)", epochs=8)
    ap.add_argument("--cycles", type=int, default=4)
    args = ap.parse_args(argv)

    _, x, y, xh, yh = run_parts(args.run, args.max_train)
    config = quick_config(args.epochs)
    print(f"machine: {machine_line()}")
    print(
        f"run {args.run}: train {len(y):,} rows, holdout {len(yh):,}; {args.epochs} epochs; cyclic: {args.cycles} "
        f"cycles of {args.epochs // args.cycles} epochs, peak learning rate {config.learning_rate:.2e}"
    )
    results = [one_seed(config, (x, y, xh, yh), seed, args.cycles) for seed in args.seeds]
    report(results, yh, args.cycles)
    print(f"machine at the end: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
