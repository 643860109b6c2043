"""Benchmark: what makes better final members for the same time? Weight averaging and seed votes.

The default CNN configuration (the quick space's defaults) is trained on a run's ``train`` part, once
per seed, with an exponential moving average of its weights kept beside them (Keras' optimizer
option ``use_ema``). Each training gives two models at no extra cost, scored on the run's
``holdout`` part (never trained on, never selected with):

- **raw**: the weights at the last epoch;
- **EMA**: the moving average (``--ema-momentum``), which Keras copies into the model when ``fit`` ends.

Then the equal vote of the seeds' raw models, and of their EMA models: what the anytime final
stage does with a configuration's new seeds. Errors are counted on the holdout; the reference is
the raw model of the same seed, in the same run.

    python benchmarks/members.py --run q1 --seeds 0 1 2 --epochs 16
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_line  # benchmarks/machine.py
from member_kit import member_parser, quick_config, run_parts

from ensemble.search.cnn.config import CnnConfig


def train_pair(config: CnnConfig, x: np.ndarray, y: np.ndarray, seed: int, momentum: float) -> tuple[Any, Any]:
    """Train once; return (raw weights at the last epoch, the model holding the EMA weights)."""
    import keras

    from ensemble.search.cnn import model as cnn

    keras.utils.set_random_seed(seed)
    model = cnn.build_model(config, momentum=cnn.bn_momentum(len(x), config))
    cnn.compile_model(model, config, len(x))
    opt = model.optimizer
    ema = opt.__class__.from_config({**opt.get_config(), "use_ema": True, "ema_momentum": momentum})
    model.compile(optimizer=ema, loss=model.loss, metrics=["accuracy"])
    raw: list[Any] = []

    class LastEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            print(f"    seed {seed} epoch {epoch + 1}/{config.epochs}: accuracy {logs['accuracy']:.4f}", flush=True)
            if epoch + 1 == config.epochs:
                raw[:] = [w.copy() for w in self.model.get_weights()]  # before fit copies the EMA in

    x_in, y_in = cnn.on_device(cnn.as_input(x)), cnn.on_device(cnn.one_hot(y))
    model.fit(x_in, y_in, batch_size=config.batch_size, epochs=config.epochs, callbacks=[LastEpoch()], verbose=0)
    return raw, model


def main(argv: list[str] | None = None) -> int:
    ap = member_parser(__doc__, run_help="a run folder name (its split is used)", epochs=16)
    ap.add_argument("--ema-momentum", type=float, default=0.999)
    args = ap.parse_args(argv)

    from ensemble.search.cnn import model as cnn

    _, x, y, xh, yh = run_parts(args.run, args.max_train)
    config = quick_config(args.epochs)
    print(f"machine: {machine_line()}")
    print(f"run {args.run}: train {len(y):,} rows, holdout {len(yh):,}; {args.epochs} epochs, EMA {args.ema_momentum}")
    probas: dict[str, list[np.ndarray]] = {"raw": [], "EMA": []}
    for seed in args.seeds:
        t0 = time.perf_counter()
        raw, model = train_pair(config, x, y, seed, args.ema_momentum)
        probas["EMA"].append(cnn.predict_proba(model, xh))
        model.set_weights(raw)
        probas["raw"].append(cnn.predict_proba(model, xh))
        errs = {k: int((v[-1].argmax(1) != yh).sum()) for k, v in probas.items()}
        print(f"  seed {seed}: raw {errs['raw']} errors, EMA {errs['EMA']} ({time.perf_counter() - t0:.0f}s)")
    print(f"\n{'model':28} {'errors':>8} {'holdout acc':>12}")
    for kind, ps in probas.items():
        singles = [int((p.argmax(1) != yh).sum()) for p in ps]
        print(f"{kind + ', one seed (mean)':28} {np.mean(singles):8.1f} {1 - np.mean(singles) / len(yh):12.4f}")
        for n in range(2, len(ps) + 1):
            e = int((np.mean(ps[:n], axis=0).argmax(1) != yh).sum())
            print(f"{kind + f', vote of {n} seeds':28} {e:8d} {1 - e / len(yh):12.4f}")
    raw_mean = np.mean([int((p.argmax(1) != yh).sum()) for p in probas["raw"]])
    ema_mean = np.mean([int((p.argmax(1) != yh).sum()) for p in probas["EMA"]])
    print(f"ratio EMA / raw (one seed, mean errors): {ema_mean / max(raw_mean, 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
