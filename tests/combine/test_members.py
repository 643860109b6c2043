"""member_probas in threads: no model is called from two threads at once, and a backend's error is one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ensemble.cli import main
from ensemble.combine.members import member_probas
from ensemble.errors import ArtifactError

keras = pytest.importorskip("keras")


class Fake:
    """A model that notices being called from two threads at once (as JAX's donated buffers do, but every time)."""

    def __init__(self, k: int, fail_at: int | None = None) -> None:
        self.k, self.fail_at, self.calls = k, fail_at, 0
        self.busy = threading.Lock()
        self.overlaps = 0
        self.threads: set[int] = set()

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1
            raise ValueError("INVALID_ARGUMENT: Invalid buffer passed to Execute()\nBuffer has been deleted or donated")
        try:
            self.calls += 1
            self.threads.add(threading.get_ident())
            if self.calls == self.fail_at:
                raise ValueError("INVALID_ARGUMENT: Invalid buffer passed to Execute()\nBuffer has been donated")
            time.sleep(0.002)  # long enough for another thread to come in
            p = np.full((len(x), 10), 0.5 / 9, np.float32)
            p[:, self.k] = 0.5
            return p
        finally:
            self.busy.release()


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_threads_never_call_one_model_at_once() -> None:
    models = [Fake(k) for k in range(4)]
    seen: set[int] = set()
    for _ in range(5):
        p = member_probas(models, images(200), ["identity", "shift:1:0"], batch_size=8, workers=2)
        assert p.shape == (4, 2, 200, 10)
        assert all(np.all(p[k].argmax(-1) == k) for k in range(4))
        seen |= set().union(*(m.threads for m in models))
    assert sum(m.overlaps for m in models) == 0
    assert len(seen) >= 2  # the batches after the first did run in two threads


@pytest.mark.parametrize("fail_at", [1, 7])  # the first batch (sequential) and one predicted in a thread
def test_a_backend_error_is_one_line_naming_member_and_backend(fail_at: int) -> None:
    models = [Fake(0), Fake(1, fail_at=fail_at)]
    with pytest.raises(ArtifactError) as err:
        member_probas(models, images(100), ["identity"], batch_size=8, workers=2, names=["a", "b"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"member b: prediction failed under the Keras {keras.backend.backend()} backend: ")
    assert "Buffer has been donated" in msg


def test_ensemble_predict_prints_a_backend_error_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import ensemble.inference.predict as predict
    from ensemble.combine.manifest import FORMAT, Manifest, write_manifest

    folder = tmp_path / "e"
    (folder / "members").mkdir(parents=True)
    inp = keras.Input((28, 28, 1))
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp))).save(
        folder / "members" / "m.keras"
    )
    manifest = {
        "format": FORMAT,
        "members": [{"name": "m", "kind": "cnn", "weight": 1.0, "file": "members/m.keras"}],
        "tta": {"mode": "list", "views": ["identity"]},
        "keras": {"backend": keras.backend.backend(), "version": keras.version()},
        "data": {"fingerprint": "f" * 64, "test_fingerprint": None, "n_test": None},
        "artifacts": {},
    }
    write_manifest(folder, Manifest.from_json(manifest))
    test = tmp_path / "test.csv"
    test.write_text("\n".join([",".join(f"pixel{i}" for i in range(784))] + ["0," * 783 + "0"] * 3) + "\n")
    monkeypatch.setattr(predict, "prediction_copy", lambda model, name: Fake(0, fail_at=1))
    assert main(["predict", "--ensemble", str(folder), "--test", str(test), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: member m: prediction failed under the Keras")


def test_a_backend_error_while_folding_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ensemble.combine.members as members

    def broken(model):
        raise RuntimeError("torch: bad\nthings happened")

    monkeypatch.setattr(members, "inference_model", broken)
    with pytest.raises(ArtifactError) as err:
        members.prediction_copy(object(), "m0")
    assert str(err.value) == (
        f"member m0: cannot prepare it for prediction under the Keras {keras.backend.backend()} backend: "
        "torch: bad things happened"
    )
