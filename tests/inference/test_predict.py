from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble.cli import main
from ensemble.combine.members import member_probas
from ensemble.errors import ArtifactError, DataError, UsageError
from ensemble.inference.predict import load_ensemble, predict_proba
from ensemble.search.cnn.simplify import model_cost

keras = pytest.importorskip("keras")


def tiny(seed: int):
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = layers.Rescaling(1 / 255.0)(inp)
    h = layers.Conv2D(4, 3, activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(h))


def make_ensemble(folder: Path, n: int = 2, views: list[str] | None = None, weights: list[float] | None = None) -> Path:
    from ensemble.combine.manifest import FORMAT, Manifest, write_manifest

    (folder / "members").mkdir(parents=True)
    members = []
    for i in range(n):
        tiny(i).save(folder / f"members/m{i}.keras")
        w = weights[i] if weights else 1.0 / n
        members.append({"name": f"m{i}", "kind": "cnn", "weight": w, "file": f"members/m{i}.keras"})
    manifest = {
        "format": FORMAT,
        "members": members,
        "tta": {"mode": "list", "views": views or ["identity", "shift:1:0", "rot:8"]},
        "keras": {"backend": keras.backend.backend(), "version": keras.version()},
        "data": {"fingerprint": "f" * 64, "test_fingerprint": None, "n_test": None},
        "artifacts": {},
    }
    write_manifest(folder, Manifest.from_json(manifest))
    return folder


def images(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_weighted_tta_average(tmp_path: Path) -> None:
    ens = load_ensemble(make_ensemble(tmp_path / "e", weights=[3.0, 1.0]))
    x = images()
    p = member_probas([m.model for m in ens.members], x, ens.views, batch_size=5)
    assert p.shape == (2, 3, 12, 10)
    expected = 0.75 * p[0].mean(0) + 0.25 * p[1].mean(0)
    np.testing.assert_allclose(predict_proba(ens, x, batch_size=5), expected, atol=1e-6)
    direct = ens.members[0].model.predict_on_batch(x[..., None].astype("float32"))
    np.testing.assert_allclose(p[0, 0], direct, atol=1e-6)  # identity view = plain prediction


def test_tampered_artifact_is_refused(tmp_path: Path, capsys) -> None:
    folder = make_ensemble(tmp_path / "e")
    f = folder / "members" / "m1.keras"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"m1\.keras: sha256 .* does not match manifest\.json"):
        load_ensemble(folder)
    test = tmp_path / "test.csv"
    from ensemble.data.load import PIXEL_COLUMNS

    rows = images(5).reshape(5, -1)
    test.write_text(",".join(PIXEL_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    out = tmp_path / "s.csv"
    assert main(["predict", "--ensemble", str(folder), "--test", str(test), "--out", str(out)]) == 2
    assert "m1.keras: sha256" in capsys.readouterr().err
    assert not out.exists()
    f.unlink()
    with pytest.raises(ArtifactError, match="m1.keras: missing, but listed"):
        load_ensemble(folder)


def test_manifest_edits_are_refused(tmp_path: Path) -> None:
    folder = make_ensemble(tmp_path / "e")
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"]["../outside"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="leaves the ensemble folder"):
        load_ensemble(folder)
    del m["artifacts"]["../outside"]
    del m["artifacts"]["members/m0.keras"]
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="m0.keras: member m0's file has no sha256"):
        load_ensemble(folder)
    with pytest.raises(ArtifactError, match="missing; expected an ensemble folder"):
        load_ensemble(tmp_path)


def test_wrong_input_shape_is_a_clear_error(tmp_path: Path) -> None:
    ens = load_ensemble(make_ensemble(tmp_path / "e", n=1))
    with pytest.raises(DataError, match=r"expected shape \(N, 28, 28\) or \(N, 784\).*got \(3, 27, 27\)"):
        predict_proba(ens, np.zeros((3, 27, 27), np.uint8))
    with pytest.raises(UsageError, match="batch-size"):
        predict_proba(ens, images(), batch_size=0)
    # a member built for other inputs is refused when loaded
    from ensemble.combine.manifest import Manifest, write_manifest

    folder = tmp_path / "e"
    bad = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    bad.save(folder / "members" / "m0.keras")
    write_manifest(folder, Manifest.from_json(json.loads((folder / "manifest.json").read_text())))
    with pytest.raises(ArtifactError, match=r"expects input \(None, 32, 32, 3\)"):
        load_ensemble(folder)


def test_baseline_member_needs_the_runs_test_set(tmp_path: Path) -> None:
    from ensemble.combine.manifest import Manifest, images_fingerprint, write_manifest

    folder = make_ensemble(tmp_path / "e", n=1)
    x = images(6)
    (folder / "members" / "b").mkdir()
    stored = np.full((6, 10), 0.1, np.float32)
    np.save(folder / "members" / "b" / "proba_test.npy", stored)
    m = json.loads((folder / "manifest.json").read_text())
    m["members"].append(
        {"name": "b", "kind": "baseline", "weight": 0.5, "probas": {"test": "members/b/proba_test.npy"}}
    )
    m["members"][0]["weight"] = 0.5
    m["data"]["test_fingerprint"], m["data"]["n_test"] = images_fingerprint(x), 6
    write_manifest(folder, Manifest.from_json(m))
    ens = load_ensemble(folder)
    p = predict_proba(ens, x)
    cnn = member_probas([ens.members[0].model], x, ens.views)[0].mean(0)
    np.testing.assert_allclose(p, 0.5 * cnn + 0.5 * stored, atol=1e-6)
    with pytest.raises(DataError, match="baseline with stored probabilities only.*fingerprint"):
        predict_proba(ens, images(6, seed=1))


def test_model_cost_counts_conv_and_dense() -> None:
    c = model_cost(tiny(0))
    # Conv2D 3x3x1x4 on 26x26 outputs + Dense 4x10
    assert c["flops"] == 2 * (26 * 26 * 9 * 4 + 4 * 10)
    assert c["params"] == 9 * 4 + 4 + 4 * 10 + 10


def run_script(code: str, *args: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -c code ARGS`` in a child with ``env``; it must succeed."""
    r = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.slow
def test_predicts_under_another_backend(tmp_path: Path) -> None:
    """A .keras saved under this backend predicts the same under JAX or torch, when one is installed."""
    import importlib.util

    others = [b for b in ("jax", "torch") if b != keras.backend.backend() and importlib.util.find_spec(b)]
    if not others:
        pytest.skip("no second Keras backend (jax or torch) installed")
    folder = make_ensemble(tmp_path / "e")
    x = images(7)
    np.save(tmp_path / "x.npy", x)
    here = predict_proba(load_ensemble(folder), x)
    code = (
        "import sys, numpy as np, keras; from ensemble.inference.predict import load_ensemble, predict_proba; "
        "p = predict_proba(load_ensemble(sys.argv[1]), np.load(sys.argv[2])); "
        "np.save(sys.argv[3], p); print(keras.backend.backend())"
    )
    for backend in others:
        env = {**os.environ, "KERAS_BACKEND": backend}
        out = tmp_path / f"p_{backend}.npy"
        r = run_script(code, folder, tmp_path / "x.npy", out, env=env)
        assert r.stdout.strip().endswith(backend)
        np.testing.assert_allclose(np.load(out), here, atol=1e-5)


HOST_DEVICES = """
import json, sys, numpy as np
from ensemble.inference.predict import load_ensemble, predict_proba
ens = load_ensemble(sys.argv[1])
where = [sorted(str(d) for d in m.model.weights[0].value.devices()) for m in ens.members]
np.save(sys.argv[3], predict_proba(ens, np.load(sys.argv[2])))
from ensemble.search.devices import backend_gpu_count
print(json.dumps({"devices": ens.devices, "where": where, "gpus": backend_gpu_count()}))
"""


@pytest.mark.slow
def test_members_predict_on_four_jax_host_devices_at_once(tmp_path: Path) -> None:
    """Under JAX with 4 host devices, 5 members load and predict on devices 0-3, 0, with the same probabilities."""
    pytest.importorskip("jax")
    folder = make_ensemble(tmp_path / "e", n=5)
    x = images(9)
    np.save(tmp_path / "x.npy", x)
    here = predict_proba(load_ensemble(folder), x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = tmp_path / "p.npy"
    r = run_script(HOST_DEVICES, folder, tmp_path / "x.npy", out, env=env)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["devices"] == 4 and got["gpus"] == 0  # host devices spread predictions; they are no trainer GPUs
    assert [w[0][-1] for w in got["where"]] == ["0", "1", "2", "3", "0"] and all(len(w) == 1 for w in got["where"])
    np.testing.assert_allclose(np.load(out), here, atol=1e-5)


def test_inference_model_folds_batchnorm_and_keeps_outputs() -> None:
    from keras import layers

    from ensemble.search.cnn.simplify import inference_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    h = layers.Rescaling(1 / 255.0)(inp)
    h = layers.RandomRotation(0.05)(h)
    h = layers.Conv2D(4, 3, use_bias=False)(h)
    h = layers.BatchNormalization()(h)
    h = layers.Activation("relu")(h)
    h = layers.Dropout(0.2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(8)(h)
    h = layers.BatchNormalization()(h)
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(h))
    rng = np.random.default_rng(0)
    for bn in [x for x in model.layers if isinstance(x, layers.BatchNormalization)]:
        n = bn.gamma.shape[0]
        bn.set_weights([rng.random(n) + 0.5, rng.random(n), rng.random(n), rng.random(n) + 0.5])
    fast = inference_model(model, strict=True)
    kinds = [type(x).__name__ for x in fast.layers]
    assert fast is not model and "BatchNormalization" not in kinds and "Dropout" not in kinds
    x = images(16).astype("float32")[..., None]
    np.testing.assert_allclose(fast.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    seq = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.BatchNormalization(), layers.Dense(10)])
    assert inference_model(seq) is seq


def test_first_trace_warning_of_each_member_is_dropped_other_tensorflow_warnings_pass() -> None:
    import logging

    from ensemble.combine.members import _OneTracePerModel

    f = _OneTracePerModel()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, msg, None, None)

    assert not f.filter(record("5 out of the last 5 calls to <function f> triggered tf.function retracing. Tracing"))
    assert f.filter(record("Gradients do not exist for variables"))


# ------------------------------------------------------------------ only verified bytes are ever loaded


class _Touch:
    """Pickled, it creates ``marker`` when unpickled: stands in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_pickle(marker: Path) -> bytes:
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump(_Touch(marker), buf)
    return buf.getvalue()


def _rewrite_manifest(folder: Path, edit=lambda m: None) -> None:
    """Apply ``edit`` to the manifest and re-hash every file in the folder, as `ensemble build` does."""
    from ensemble.combine.manifest import Manifest, write_manifest

    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    write_manifest(folder, Manifest.from_json(m))


@pytest.fixture(scope="module")
def with_baselines(tmp_path_factory) -> dict[str, Path]:
    """Per family: an ensemble of one CNN and one baseline whose saved model predicts (no stored test probas)."""
    from conftest import synthetic_digits

    from ensemble.search.baselines.models import FAMILIES, FitContext
    from ensemble.search.baselines.preprocess import fit_preprocessor
    from ensemble.search.baselines.saved import save_model

    x, y = synthetic_digits(200, seed=3)
    ctx = FitContext(threads=1, seed=0, device="cpu", n_features=784, x_var=0.1)
    params = {"xgboost": {"n_estimators": 4, "max_depth": 2}, "logreg": {"max_iter": 50}}
    out = {}
    for family, p in params.items():
        folder = make_ensemble(tmp_path_factory.mktemp(family) / "e", n=1)
        fam, pre = FAMILIES[family], fit_preprocessor(x)
        (folder / "members" / "b").mkdir()
        save_model(folder / "members" / "b", fam, pre, fam.build(p, ctx).fit(pre.transform(x), y))
        entry = {"name": "b", "kind": "baseline", "weight": 0.5, "model_dir": "members/b"}
        _rewrite_manifest(folder, lambda m, e=entry, f=family: m["members"].append({**e, "study": f"baseline-{f}"}))
        out[family] = folder
    return out


def _copy(src: Path, dst: Path, *, study: bool = True) -> Path:
    import shutil

    shutil.copytree(src, dst)
    if not study:
        _rewrite_manifest(dst, lambda m: m["members"][-1].pop("study"))
    return dst


def test_evil_pickle_runs_when_unpickled(tmp_path: Path) -> None:
    """The payload the tests below plant is live: loading it by hand does create the marker."""
    import io

    import joblib

    joblib.load(io.BytesIO(evil_pickle(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("study", [True, False], ids=["study", "no-study"])
@pytest.mark.parametrize(
    "family, planted", [("xgboost", "model.joblib"), ("logreg", "preprocess.joblib"), ("logreg", "model.ubj")]
)
def test_unlisted_file_in_a_member_folder_is_never_loaded(with_baselines, tmp_path, family, planted, study) -> None:
    """The issue: an XGBoost member's folder with an extra model.joblib loaded it, unverified."""
    folder = _copy(with_baselines[family], tmp_path / "e", study=study)
    x = images(9, seed=4)
    before = predict_proba(load_ensemble(folder), x)
    marker = tmp_path / "marker"
    (folder / "members" / "b" / planted).write_bytes(evil_pickle(marker))
    ens = load_ensemble(folder)
    loads = {"xgboost": {"model.ubj", "preprocess.joblib"}, "logreg": {"model.joblib"}}[family]
    assert ens.members[1].model_files == {n: f"members/b/{n}" for n in loads}
    np.testing.assert_allclose(predict_proba(ens, x), before, atol=1e-6)  # the baseline's own model predicted
    assert not marker.exists()
    from ensemble.combine.verify import read_verified

    with pytest.raises(ArtifactError, match=rf"b/{planted}: not listed with a sha256 in manifest\.json"):
        read_verified(folder, ens.manifest, f"members/b/{planted}")
    assert not marker.exists()


@pytest.mark.parametrize("study", [True, False], ids=["study", "no-study"])
def test_listed_extra_model_file_is_loaded_only_by_the_members_kind(with_baselines, tmp_path, study) -> None:
    """Even hash-listed, a model.joblib beside model.ubj is not what an XGBoost member loads."""
    folder = _copy(with_baselines["xgboost"], tmp_path / "e", study=study)
    x = images(9, seed=4)
    before = predict_proba(load_ensemble(folder), x)
    marker = tmp_path / "marker"
    (folder / "members" / "b" / "model.joblib").write_bytes(evil_pickle(marker))
    _rewrite_manifest(folder)  # now listed with its sha256
    if study:  # the member's study says XGBoost: model.ubj + preprocess.joblib
        np.testing.assert_allclose(predict_proba(load_ensemble(folder), x), before, atol=1e-6)
    else:
        with pytest.raises(ArtifactError, match=r"members/b: both model\.joblib and model\.ubj listed"):
            load_ensemble(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "family, rel, when",
    [
        ("xgboost", "members/b/preprocess.joblib", "load"),
        ("xgboost", "members/b/preprocess.joblib", "predict"),
        ("xgboost", "members/b/model.ubj", "predict"),
        ("logreg", "members/b/model.joblib", "load"),
        ("logreg", "members/b/model.joblib", "predict"),
        ("logreg", "members/m0.keras", "load"),
    ],
)
def test_listed_file_changed_after_build_is_refused(with_baselines, tmp_path, family, rel, when) -> None:
    """A listed file whose bytes changed, before loading or between loading and predicting:
    refused, naming it, before anything is unpickled."""
    folder = _copy(with_baselines[family], tmp_path / "e")
    marker = tmp_path / "marker"
    ens = load_ensemble(folder) if when == "predict" else None
    (folder / rel).write_bytes(evil_pickle(marker))
    with pytest.raises(ArtifactError, match=rf"{rel}: sha256 .* does not match manifest\.json") as err:
        if ens is None:
            load_ensemble(folder)
        else:  # the check when loading passed: the bytes read to predict are checked again
            predict_proba(ens, images(5))
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("rel", ["../outside.npy", "members/../../outside.npy", "ABS", "members\\..\\..\\x.npy", ""])
def test_manifest_paths_must_stay_in_the_folder(tmp_path: Path, rel: str) -> None:
    from ensemble.search.artifacts import sha256_file

    folder = make_ensemble(tmp_path / "e", n=1)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    rel = str(outside) if rel == "ABS" else rel
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"][rel] = sha256_file(outside)
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="leaves the ensemble folder"):
        load_ensemble(folder)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = make_ensemble(tmp_path / "e", n=1)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    (folder / "members" / "link.npy").symlink_to(outside)
    _rewrite_manifest(folder)  # the link is listed, with the outside file's (correct) sha256
    with pytest.raises(ArtifactError, match=r"link\.npy: a symlink out of the ensemble folder"):
        load_ensemble(folder)
    (folder / "members" / "link.npy").unlink()
    (folder / "members" / "link.npy").symlink_to(folder / "members" / "m0.keras")  # inside: fine
    _rewrite_manifest(folder)
    assert load_ensemble(folder).members[0].model is not None


def test_keras_member_loads_from_the_checked_bytes_in_a_private_copy(tmp_path, monkeypatch) -> None:
    import stat
    import tempfile

    from ensemble.combine.members import _private_copy, load_keras_model

    folder = make_ensemble(tmp_path / "e", n=1)
    raw = (folder / "members" / "m0.keras").read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with _private_copy(raw, ".keras") as copy:
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
        assert copy.read_bytes() == raw
    assert not list(scratch.iterdir())
    (folder / "members" / "m0.keras").write_bytes(b"not a zip")  # the path is only a name: the bytes load
    model = load_keras_model(folder / "members" / "m0.keras", "m0", data=raw)
    x = images(3)[..., None].astype("float32")
    np.testing.assert_allclose(model.predict_on_batch(x), tiny(0).predict_on_batch(x), atol=1e-6)
    assert not list(scratch.iterdir())
    with pytest.raises(ArtifactError, match=r"m0\.keras: cannot load Keras model for member m0: ") as err:
        load_keras_model(folder / "members" / "m0.keras", "m0", data=b"not a zip")
    assert "\n" not in str(err.value) and not list(scratch.iterdir())


def _straightforward(models: list, x: np.ndarray, views: list[str]) -> np.ndarray:
    """The plain path: every member, every view, the whole set in one ``predict_on_batch`` call."""
    from ensemble.combine.tta import apply_view

    return np.stack(
        [np.stack([np.asarray(m.predict_on_batch(apply_view(v, x)[..., None])) for v in views]) for m in models]
    )


def _small_cnn(seed: int):
    """An ``ensemble.search.cnn.model`` member (BatchNorm, dropout, augmentation layer), folded as predict folds it."""
    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.model import build_model
    from ensemble.search.cnn.simplify import inference_model

    keras.utils.set_random_seed(seed)
    model = build_model(CnnConfig(conv_blocks=2, filters=4, dense_units=8))
    for layer in model.layers:  # non-trivial BatchNorm statistics, so folding changes the arithmetic
        if type(layer).__name__ == "BatchNormalization":
            rng = np.random.default_rng(seed)
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return inference_model(model, strict=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_member_probas_matches_per_member_per_view_predictions(workers: int) -> None:
    # Same arithmetic, other batch shapes: a backend may pick other kernels/blocking for a batch
    # of V x 5 images than for 23, which reorders float32 sums (relative error ~1e-7 per add);
    # probabilities agree to 1e-5, far below any margin that decides a label here.
    models = [tiny(0), _small_cnn(1), _small_cnn(2)]
    views = ["identity", "shift:1:0", "rot:8", "zoom:1.1"]
    x = images(23, seed=3)  # 23 = 4 batches of 5 + a padded batch of 3
    p = member_probas(models, x, views, batch_size=5, workers=workers, precision="float32")
    ref = _straightforward(models, x, views)
    assert p.shape == ref.shape == (3, 4, 23, 10)
    np.testing.assert_allclose(p, ref, atol=1e-5, rtol=0)
    assert np.array_equal(p.argmax(-1), ref.argmax(-1))
    np.testing.assert_array_equal(p.mean(1).argmax(-1), ref.mean(1).argmax(-1))  # TTA-averaged labels too


def test_no_model_is_called_from_two_threads() -> None:
    import threading
    import time

    class Guarded:
        """A model that records whether two threads ever called it at once."""

        def __init__(self, model) -> None:
            self.model, self.busy, self.overlap, self.threads = model, threading.Lock(), False, set()

        def predict_on_batch(self, xb):
            if not self.busy.acquire(blocking=False):
                self.overlap = True
                self.busy.acquire()
            try:
                self.threads.add(threading.get_ident())
                time.sleep(0.002)  # widen the window a second thread would hit
                return self.model.predict_on_batch(xb)
            finally:
                self.busy.release()

    base = [tiny(i) for i in range(3)]
    guarded = [Guarded(m) for m in base]
    x = images(30)
    seen: list[int] = []
    p = member_probas(guarded, x, ["identity", "shift:0:1"], batch_size=4, workers=2, advance=seen.append)
    assert not any(g.overlap for g in guarded)
    assert sum(seen) == len(x)  # every image advanced once
    np.testing.assert_allclose(p, _straightforward(base, x, ["identity", "shift:0:1"]), atol=1e-5, rtol=0)


def test_bfloat16_is_opt_in_and_changes_only_near_ties(monkeypatch) -> None:
    from ensemble.search.cnn.simplify import PRECISION_ENV, resolve_precision

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert resolve_precision() == "float32"
    monkeypatch.setenv(PRECISION_ENV, "bfloat16")
    assert resolve_precision() == "bfloat16"
    assert resolve_precision("float32") == "float32"  # an explicit argument wins
    monkeypatch.setenv(PRECISION_ENV, "float16")
    with pytest.raises(UsageError, match="precision must be one of float32, bfloat16"):
        resolve_precision()
    monkeypatch.delenv(PRECISION_ENV)

    models = [_small_cnn(1), _small_cnn(2)]
    views = ["identity", "rot:-8"]
    x = images(40, seed=5)
    p32 = member_probas(models, x, views, batch_size=16)
    np.testing.assert_allclose(p32, _straightforward(models, x, views), atol=1e-5, rtol=0)  # default: float32
    p16 = member_probas(models, x, views, batch_size=16, precision="bfloat16")
    # bfloat16 keeps 8 significant bits: probabilities move by ~1e-3, and a label can change only
    # where float32's top two probabilities are that close.
    np.testing.assert_allclose(p16, p32, atol=2e-2, rtol=0)
    top2 = np.sort(p32, axis=-1)[..., -2:]
    changed = p16.argmax(-1) != p32.argmax(-1)
    assert np.all((top2[..., 1] - top2[..., 0])[changed] < 2e-2)


def test_a_folding_that_changes_outputs_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken fold is never used: strict raises, otherwise the original model is kept and a warning logged."""
    from ensemble.search.cnn import simplify
    from ensemble.search.cnn.config import CnnConfig
    from ensemble.search.cnn.model import build_model

    model = build_model(CnnConfig(conv_blocks=2, filters=4, dense_units=8))
    real = simplify._rebuild

    def broken(cfg, folded, layers):  # the folded copy with its first kernel zeroed
        fast = real(cfg, folded, layers)
        conv = next(x for x in fast.layers if type(x).__name__ == "Conv2D")
        conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
        return fast

    monkeypatch.setattr(simplify, "_rebuild", broken)
    with pytest.raises(ArtifactError, match="BatchNorm folding failed"):
        simplify.inference_model(model, strict=True)
    assert simplify.inference_model(model) is model
    assert [r.levelname for r in caplog.records if r.name == simplify.__name__] == ["WARNING"]
