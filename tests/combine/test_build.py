from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset

from ensemble.cli import main
from ensemble.combine.records import Comparison
from ensemble.data.runs import open_run
from ensemble.errors import DataError, UsageError
from ensemble.inference.predict import load_ensemble, predict_proba

keras = pytest.importorskip("keras")


def tiny_model(x: np.ndarray, y: np.ndarray, seed: int):
    """Rescaling + Conv2D(4) + Dense(10 softmax), trained a few steps: raw 0..255 pixels in, probabilities out."""
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = layers.Rescaling(1 / 255.0)(inp)
    h = layers.Conv2D(4, 3, strides=2, activation="relu")(h)
    h = layers.Flatten()(h)
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(h))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x[..., None].astype("float32"), y, epochs=2 + seed, batch_size=32, verbose=0)
    return model


def make_trials(run, n: int = 3, study: str = "cnn", **attrs) -> list[Path]:
    """Fake completed CNN trials: model.keras, config.json, proba_*.npy and user_attrs in the run's journal."""
    import optuna

    from ensemble.io import write_json
    from ensemble.metrics import accuracy, log_loss
    from ensemble.search.artifacts import save_probas, trial_dir
    from ensemble.search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name=study, storage=open_storage(run), direction="maximize", load_if_exists=True)
    x_tr, y_tr = run.part("train")
    x_val, y_val = run.part("val")
    folders = []
    for i in range(n):
        model = tiny_model(x_tr, y_tr, seed=i)
        folder = trial_dir(run, study, len(st.trials))
        model.save(folder / "model.keras")
        write_json(folder / "config.json", {"seed": i, "epochs": 2 + i})
        pred = {
            part: model.predict_on_batch(x[..., None].astype("float32"))
            for part, x in (("val", x_val), ("holdout", run.part("holdout")[0]), ("test", run.x_test))
        }
        save_probas(folder, pred)
        user_attrs = {
            "val_accuracy": accuracy(y_val, pred["val"]),
            "val_logloss": log_loss(y_val, pred["val"]),
            "artifact_dir": str(folder),
            "epochs_run": 2 + i,
            "best_epoch": 2 + i,
            "backend": keras.backend.backend(),
            **attrs,
        }
        st.add_trial(optuna.trial.create_trial(value=user_attrs["val_accuracy"], user_attrs=user_attrs))
        folders.append(folder)
    return folders


@pytest.fixture
def run(tmp_path: Path, runs_env: Path):
    data = write_dataset(tmp_path / "data", n_train=300, n_test=40, seed=1)
    r = open_run("t", data=str(data), val_frac=0.2, holdout_frac=0.2, say=lambda s: None)
    make_trials(r)
    return r


def test_build_then_predict_writes_a_checked_submission(run, tmp_path: Path, capsys) -> None:
    assert main(["build", "--run", "t", "--top-k", "2", "--weights", "greedy", "--tta", "auto"]) == 0
    out = capsys.readouterr().out
    assert "best_single" in out and "holdout acc" in out and "manifest.json" in out
    folder = run.path("ensemble")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "ensemble-manifest/1" and m["data"]["fingerprint"] == run.meta["data"]["fingerprint"]
    assert 1 <= len(m["members"]) <= 2 and sum(e["weight"] for e in m["members"]) == pytest.approx(1.0)
    assert m["tta"]["views"][0] == "identity" and m["keras"]["backend"] == keras.backend.backend()
    assert set(m["artifacts"]) >= {e["file"] for e in m["members"]} | {"proba_val.npy", "proba_test.npy"}
    assert all(e["flops"] > 0 and e["params"] > 0 for e in m["members"])
    assert np.load(folder / "proba_test.npy").shape == (40, 10)
    assert not list(run.root.glob(".ensemble-*"))

    sub = tmp_path / "submission.csv"
    test_csv = tmp_path / "data" / "test.csv"
    args = ["predict", "--ensemble", str(folder), "--test", str(test_csv), "--out", str(sub)]
    assert main([*args, "--proba", str(tmp_path / "p.npy")]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert main(["submission", "check", str(sub), "--test", str(test_csv)]) == 0
    assert "OK, 40 rows" in capsys.readouterr().out
    # predict recomputes what build stored for the run's own test set
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), np.load(folder / "proba_test.npy"), atol=1e-5)


def test_identity_only_tta_equals_no_tta(run) -> None:
    from ensemble.combine.build import build_ensemble

    m = build_ensemble(run, top_k=3, weights="equal", tta="identity", progress=False, say=lambda s: None)
    assert m.tta.views == ("identity",)
    m_none = build_ensemble(run, top_k=3, weights="equal", tta="none", progress=False, say=lambda s: None)
    assert m_none.tta.views == ("identity",)
    ens = load_ensemble(run.path("ensemble"))
    x = run.x_test
    np.testing.assert_allclose(predict_proba(ens, x, tta=True), predict_proba(ens, x, tta=False), atol=1e-6)
    # equal weights over the saved per-trial probabilities
    saved = np.mean([np.load(run.path("models", "cnn", f"trial-{i:04d}", "proba_test.npy")) for i in range(3)], 0)
    np.testing.assert_allclose(np.load(run.path("ensemble", "proba_test.npy")), saved, atol=1e-5)
    assert m.metrics is not None
    assert m.metrics[Comparison.TOP_K_EQUAL].holdout == m.metrics[Comparison.TOP_K_EQUAL_TTA].holdout


def test_top_k_order_and_list_tta(run) -> None:
    from ensemble.combine.build import build_ensemble

    m = build_ensemble(run, top_k=1, weights="equal", tta="shift:1:0,rot:8", progress=False, say=lambda s: None)
    assert m.tta.views == ("shift:1:0", "rot:8") and m.tta.mode == "list"
    assert len(m.members) == 1
    from ensemble.combine.candidates import study_candidates
    from ensemble.search.storage import open_storage

    ranked = study_candidates(run, open_storage(run), "cnn", "cnn")
    assert m.members[0].name == ranked[0].name
    keys = [(-c.val_accuracy, c.val_logloss) for c in ranked]
    assert keys == sorted(keys)


def test_build_refuses_trials_from_other_data(run) -> None:
    from ensemble.combine.build import build_ensemble

    make_trials(run, n=1, study="cnn", data_fingerprint="0" * 64)
    with pytest.raises(DataError, match="trial-0003 was trained on data 0000"):
        build_ensemble(run, top_k=4, progress=False, say=lambda s: None)


def test_build_refuses_probabilities_of_another_split(run) -> None:
    from ensemble.combine.build import build_ensemble

    f = run.path("models", "cnn", "trial-0000", "proba_val.npy")
    np.save(f, np.load(f)[:-1])
    with pytest.raises(DataError, match="proba_val.npy: shape .* other data or another split"):
        build_ensemble(run, top_k=3, progress=False, say=lambda s: None)


def test_build_without_cnn_study_is_a_usage_error(tmp_path: Path, runs_env: Path, capsys) -> None:
    data = write_dataset(tmp_path / "data", n_train=100, n_test=10)
    open_run("empty", data=str(data), say=lambda s: None)
    assert main(["build", "--run", "empty"]) == 2
    assert "no 'cnn' study; run the CNN search first" in capsys.readouterr().err
    from ensemble.combine.build import build_ensemble

    with pytest.raises(UsageError, match="--top-k"):
        build_ensemble(open_run("empty", say=lambda s: None), top_k=0)


@pytest.mark.slow
def test_refit_uses_train_plus_val_and_keeps_holdout_out(run, monkeypatch: pytest.MonkeyPatch) -> None:
    import ensemble.combine.build as build

    seen = {}

    def fake_refit(config, x, y, epochs, seed):
        seen.setdefault("rows", []).append(len(x))
        seen.setdefault("epochs", []).append(epochs)
        return tiny_model(x, y, seed=0)

    monkeypatch.setattr(build, "refit_member", fake_refit)
    m = build.build_ensemble(run, top_k=2, weights="equal", tta="none", refit=True, progress=False, say=lambda s: None)
    n_tv = len(run.split.train) + len(run.split.val)
    assert seen["rows"] == [n_tv, n_tv] and set(seen["epochs"]) <= {2, 3, 4}  # each trial's best_epoch
    assert all(e.refit is not None and e.refit.rows == n_tv for e in m.members)
    assert m.metrics is not None and Comparison.TOP_K_EQUAL_TTA_REFIT in m.metrics
    load_ensemble(run.path("ensemble"))  # refit models saved and hash-listed


def _flatten(x):
    return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0


def test_greedy_can_pull_in_a_baseline(run, tmp_path: Path) -> None:
    """A baseline-* study member (saved probabilities + model.joblib) joins when it helps."""
    import joblib
    import optuna
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from ensemble.combine.build import build_ensemble
    from ensemble.inference.predict import load_ensemble, predict_proba
    from ensemble.metrics import accuracy, log_loss
    from ensemble.search.artifacts import save_probas, trial_dir
    from ensemble.search.storage import open_storage

    x_tr, y_tr = run.part("train")
    pipe = make_pipeline(FunctionTransformer(_flatten), LogisticRegression(max_iter=300)).fit(x_tr, y_tr)
    folder = trial_dir(run, "baseline-logreg", 0)
    joblib.dump(pipe, folder / "model.joblib")
    y_val = run.part("val")[1]
    probas = {"val": np.eye(10, dtype=np.float32)[y_val] * 0.99999 + 1e-6}  # a (too) good validation score
    probas["holdout"] = pipe.predict_proba(run.part("holdout")[0])
    probas["test"] = pipe.predict_proba(run.x_test)
    save_probas(folder, probas)
    st = optuna.create_study(study_name="baseline-logreg", storage=open_storage(run), direction="maximize")
    attrs = {"val_accuracy": accuracy(y_val, probas["val"]), "val_logloss": log_loss(y_val, probas["val"])}
    st.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={**attrs, "artifact_dir": str(folder)}))

    m = build_ensemble(run, top_k=2, weights="greedy", tta="none", include_baselines=True, progress=False, say=print)
    base = m.baselines
    assert base and base[0].name == "baseline-logreg-trial-0000" and base[0].weight > 0.5
    assert base[0].model_dir == "members/baseline-logreg-trial-0000"
    ens = load_ensemble(run.path("ensemble"))
    np.testing.assert_allclose(
        predict_proba(ens, run.x_test), np.load(run.path("ensemble", "proba_test.npy")), atol=1e-5
    )
    other = np.random.default_rng(5).integers(0, 256, (9, 28, 28), dtype=np.uint8)
    assert predict_proba(ens, other).shape == (9, 10)  # the baseline's own model predicts new images
