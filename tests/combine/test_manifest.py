"""The manifest records: every layout written reads back as the same JSON; a bad field is one line naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ensemble.combine.manifest import FORMAT, MANIFEST, Manifest, MemberEntry, read_manifest, write_manifest
from ensemble.combine.records import Comparison, EnsembleRow, MemberRefit
from ensemble.errors import ArtifactError
from ensemble.search.artifacts import ModelId

SHA = "ab" * 32
SCORES = {"val": {"accuracy": 0.95, "logloss": 0.2}, "holdout": {"accuracy": 0.94, "logloss": 0.25}}
CNN = {
    "name": "cnn-trial-0003",
    "kind": "cnn",
    "weight": 0.6,
    "file": "members/cnn-trial-0003.keras",
    "config": "members/cnn-trial-0003.config.json",
    "study": "cnn",
    "trial": 3,
    "val_accuracy": 0.95,
    "val_logloss": 0.2,
    "refit": None,
    "params": 1000,
    "flops": 20000,
}
BASELINE = {
    "name": "baseline-svm-trial-0001",
    "kind": "baseline",
    "weight": 0.4,
    "probas": {p: f"members/baseline-svm-trial-0001/proba_{p}.npy" for p in ("val", "holdout", "test")},
    "study": "baseline-svm",
    "model_dir": "members/baseline-svm-trial-0001",
    "trial": 1,
    "val_accuracy": 0.93,
    "val_logloss": 0.3,
}
#: what ``ensemble build`` writes, key for key in its order
BUILT = {
    "format": FORMAT,
    "created": "2026-01-02T03:04:05+0000",
    "run": "r",
    "members": [CNN, BASELINE],
    "weights": {
        "mode": "greedy",
        "seed": 0,
        "n_iter": 50,
        "metric": "accuracy",
        "best_iter": 2,
        "trajectory": [{"pick": "cnn-trial-0003", "val_logloss": 0.2, "val_accuracy": 0.95}],
    },
    "tta": {
        "mode": "auto",
        "min_gain_se": 1.0,
        "views": ["identity", "rot:8"],
        "candidates": ["identity", "rot:8", "zoom:1.1"],
        "steps": [{"views": ["identity"], "val_logloss": 0.2, "val_accuracy": 0.95}, {"add": "rot:8"}],
        "gain_val": {"identity": {"accuracy": 0.95, "logloss": 0.2}, "tta": {"accuracy": 0.96, "logloss": 0.19}},
    },
    "preprocessing": {"input": "raw", "views": "before each model"},
    "keras": {"backend": "tensorflow", "version": "3.0.0"},
    "versions": {"python": "3.11.0", "numpy": "2.0.0"},
    "data": {"fingerprint": "f" * 64, "test_fingerprint": "e" * 64, "n_test": 40, "split": {"train": 5, "val": 2}},
    "selection": "validation only",
    "metrics": {
        "best_single": {"member": "cnn-trial-0003", **SCORES},
        "top_k_equal": SCORES,
        "top_k_greedy_tta": SCORES,
        "top_k_greedy_tta_refit": {"holdout": SCORES["holdout"]},
    },
    "artifacts": {"members/cnn-trial-0003.keras": SHA},
}


def refitted() -> dict:
    """What the final refit and the final stage write: ensemble-full with one added member."""
    full = {k: copy.deepcopy(v) for k, v in BUILT.items() if k not in ("metrics", "artifacts")}
    refit = {"refit": True, "epochs": 3, "rows": 300, "seed": 3, "seconds": 1.5}
    test = "members/cnn-trial-0003.test.npy"
    full["members"] = [
        {**CNN, "refit_full": refit, "test_proba": test, "group_weight": 0.6},
        {**BASELINE, "refit_full": None},
        {
            **{k: CNN[k] for k in ("name", "kind", "weight", "file", "config", "study", "trial")},
            "name": "cnn-trial-0003-seed1003",
            "extra_of": "cnn-trial-0003",
            "test_proba": "members/cnn-trial-0003-seed1003.test.npy",
            "refit_full": {**refit, "seed": 1003},
        },
    ]
    full["metrics_before_refit"] = BUILT["metrics"]
    full["refit_full"] = {
        "final": "ensemble (TTA)",
        "source_sha256": SHA,
        "rows": 300,
        "predict_seconds": 0.4,
        "created": "2026-01-02T03:05:00+0000",
        "note": "no holdout score",
        "extra_members": 1,
    }
    return {**full, "artifacts": {}}


@pytest.mark.parametrize("data", [BUILT, refitted()], ids=["ensemble", "ensemble-full"])
def test_written_layouts_read_back_as_the_same_json(data: dict) -> None:
    m = Manifest.from_json(data)
    assert m.to_json() == data
    assert json.dumps(m.to_json(), indent=2) == json.dumps(data, indent=2)  # the keys in the very same order
    assert Manifest.from_json(m.to_json()) == m


def test_records_give_typed_attributes() -> None:
    m = Manifest.from_json(refitted())
    assert [e.name for e in m.cnns] == ["cnn-trial-0003", "cnn-trial-0003-seed1003"]
    assert [e.name for e in m.extras] == ["cnn-trial-0003-seed1003"] and m.baselines[0].probas is not None
    assert m.member("cnn-trial-0003").model_id == ModelId("cnn", 3) and m.members[1].model_id == ModelId(
        "baseline-svm", 1
    )
    assert m.members[0].refit_full == MemberRefit(True, epochs=3, rows=300, seed=3, seconds=1.5)
    assert m.metrics is None and m.metrics_before_refit is not None
    assert m.metrics_before_refit[Comparison.BEST_SINGLE].member == "cnn-trial-0003"
    assert m.tta.gain_val is not None and m.tta.gain_val["tta"].accuracy == 0.96
    with pytest.raises(ArtifactError, match="no member named 'nope'"):
        m.member("nope")


def test_older_layouts_still_read() -> None:
    """A refit of one CNN trial (its keys in another order) and a hand-made minimal manifest."""
    single = {
        "members": [
            {"name": "cnn-trial-0000", "kind": "cnn", "weight": 1.0, "file": "members/cnn-trial-0000.keras"}
            | {"study": "cnn", "trial": 0, "config": "members/cnn-trial-0000.config.json"}
            | {"refit_full": {"refit": True, "epochs": 2, "rows": 300, "seconds": 1.0}}
        ],
        "tta": {"mode": "none", "views": ["identity"]},
        "format": FORMAT,
        "weights": {"mode": "single"},
        "data": {"fingerprint": "f" * 64, "n_test": 40, "test_fingerprint": "e" * 64},
        "metrics_before_refit": {},
        "refit_full": {"final": "cnn-trial-0000", "source_sha256": SHA, "rows": 300, "created": "x", "note": "n"},
        "artifacts": {},
    }
    minimal = {"format": FORMAT, "members": [{"name": "m", "kind": "cnn", "weight": 1}], "tta": {"views": []}}
    for data in (single, {**minimal, "artifacts": {}}):
        assert Manifest.from_json(data).to_json() == data


def _one_line_error(data: object) -> str:
    with pytest.raises(ArtifactError) as err:
        Manifest.from_json(data, "runs/r/ensemble/manifest.json")
    text = str(err.value)
    assert "\n" not in text and text.startswith("runs/r/ensemble/manifest.json: ")
    return text


def test_a_bad_field_is_one_line_naming_the_file_and_the_key() -> None:
    bad = copy.deepcopy(BUILT)
    bad["members"][1]["weight"] = "heavy"
    assert "'members[1].weight' must be a number, got 'heavy'" in _one_line_error(bad)
    del bad["members"][0]["name"]
    assert "'members[0].name' is missing" in _one_line_error(bad)
    bad = {**BUILT, "metrics": {"top_k_magic": SCORES}}
    assert "'metrics.top_k_magic' is not a comparison" in _one_line_error(bad)
    bad = {**BUILT, "tta": {"views": ["identity", 3]}}
    assert "'tta.views' must be a list of strings" in _one_line_error(bad)
    bad = {**BUILT, "members": [{**CNN, "kind": "svm"}]}
    assert "'members[0].kind' must be cnn or baseline" in _one_line_error(bad)
    bad = {**BUILT, "refit_full": {"final": "x"}}
    assert "'refit_full.source_sha256' is missing" in _one_line_error(bad)
    assert "'artifacts' must map relative paths to sha256" in _one_line_error({**BUILT, "artifacts": {"a": "0"}})
    assert "not an ensemble manifest" in _one_line_error({**BUILT, "format": "other/2"})
    assert "the top level must be an object, got []" in _one_line_error([])


def test_read_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest.json: missing; expected an ensemble folder"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**BUILT, "members": [{**CNN, "trial": "3"}]}))
    with pytest.raises(ArtifactError, match=rf"{tmp_path / MANIFEST}: 'members\[0\]\.trial' must be an integer"):
        read_manifest(tmp_path)


def test_write_manifest_lists_every_file_and_reads_back(tmp_path: Path) -> None:
    (tmp_path / "members").mkdir()
    (tmp_path / "members" / "m.keras").write_bytes(b"model")
    (tmp_path / "proba_test.npy").write_bytes(b"probas")
    m = Manifest.from_json({**BUILT, "artifacts": {}})
    written = write_manifest(tmp_path, m)
    assert set(written.artifacts) == {"members/m.keras", "proba_test.npy"}
    assert read_manifest(tmp_path) == written
    text = (tmp_path / MANIFEST).read_text()
    assert text == json.dumps(written.to_json(), indent=2) + "\n"


def test_names_of_models_and_ensemble_rows() -> None:
    assert EnsembleRow.parse("ensemble (no TTA)") is EnsembleRow.NO_TTA and EnsembleRow.parse("cnn-trial-0001") is None
    assert MemberEntry("x", "cnn", 1.0).model_id is None
    assert ModelId.parse(MemberEntry("a", "cnn", 1.0, study="cnn", trial=7).model_id.name) == ModelId("cnn", 7)
