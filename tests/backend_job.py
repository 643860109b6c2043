"""One Keras backend's tiny end-to-end job, run as a child process by tests/test_backends.py.

    KERAS_BACKEND=jax python tests/backend_job.py WORK DATA SPACE [ENSEMBLE ...]

Keras picks its backend when it is first imported, hence one process per backend. Under the
backend KERAS_BACKEND names: the CNN search (two trials of SPACE, trained in this process: a
trainer process per search would double the imports), then, through the CLI as a user runs them,
``ensemble build`` (both trials as members, three TTA views, small batches so that prediction
has many) and ``ensemble predict``. Then the
built ensemble predicts the test images REPEATS more times in two threads: a race between the
threads shows as a crash or as probabilities that change. Each ENSEMBLE folder given (built
under another backend) is predicted here too. Writes WORK/result.json and the probabilities
(WORK/own.npy, WORK/cross-BACKEND.npy); the test compares them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPEATS = 10
BATCH = 8  # 120 test images: 15 batches a prediction
VIEWS = "identity,shift:1:0,rot:8"


def main(work: Path, data: str, space: str, foreign: list[str]) -> int:
    from ensemble.cli import main as cli
    from ensemble.data.runs import open_run
    from ensemble.search.cnn.study import SearchSettings, load_cnn_space, run_search

    backend = os.environ["KERAS_BACKEND"]
    times: dict[str, float] = {}

    def step(name: str, args: list[str]) -> None:
        t0 = time.perf_counter()
        rc = cli(args)
        times[name] = round(time.perf_counter() - t0, 1)
        if rc != 0:
            raise SystemExit(f"ensemble {name} exited {rc} under {backend}")

    t0 = time.perf_counter()
    run = open_run(backend, data=data, say=lambda s: None)
    run_search(run, load_cnn_space(space), SearchSettings(isolate=False, trials=2, pruner="none"), say=print)
    times["search"] = round(time.perf_counter() - t0, 1)
    step("build", ["build", "--run", backend, "--top-k", "2", "--weights", "equal", "--tta", VIEWS,
                   "--batch-size", str(BATCH)])  # fmt: skip
    folder = Path(os.environ["ENSEMBLE_RUNS"]) / backend / "ensemble"
    step("predict", ["predict", "--ensemble", str(folder), "--test", data, "--out", str(work / "submission.csv"),
                     "--proba", str(work / "own.npy"), "--batch-size", str(BATCH)])  # fmt: skip

    import keras

    from ensemble.data.load import read_test_images as read_test
    from ensemble.inference.predict import load_ensemble, predict_proba

    x = read_test(data)
    own = np.load(work / "own.npy")
    ens = load_ensemble(folder)
    t0 = time.perf_counter()
    repeat_diff = 0.0
    for _ in range(REPEATS):
        p = predict_proba(ens, x, batch_size=BATCH, workers=2)
        repeat_diff = max(repeat_diff, float(np.abs(p - own).max()))
    times["repeats"] = round(time.perf_counter() - t0, 1)
    built = np.load(folder / "proba_test.npy")  # what the build predicted for the same images
    for other in foreign:
        manifest = json.loads((Path(other) / "manifest.json").read_text())
        np.save(work / f"cross-{manifest['keras']['backend']}.npy", predict_proba(load_ensemble(other), x))
    result = {
        "backend": keras.backend.backend(),
        "ensemble": str(folder),
        "members": len(ens.members),
        "views": ens.views,
        "images": len(x),
        "repeats": REPEATS,
        "repeat_maxdiff": repeat_diff,
        "build_maxdiff": float(np.abs(built - own).max()),
        "seconds": times,
    }
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]))
