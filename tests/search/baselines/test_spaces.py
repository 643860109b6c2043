from __future__ import annotations

import pytest
from conftest import REPO

from ensemble.errors import UsageError
from ensemble.search.baselines.models import FAMILIES
from ensemble.search.baselines.spaces import first_params, load_family_space, parse_models, space_path
from ensemble.search.spaces import load_space

REPO_SPACES = REPO / "search_spaces"


def test_parse_models():
    assert parse_models(None) == list(FAMILIES)
    assert parse_models("svm, knn,svm") == ["svm", "knn"]
    with pytest.raises(UsageError, match="valid: logreg"):
        parse_models(",")


def test_shipped_search_spaces_are_valid():
    for family in FAMILIES.values():
        space = load_family_space(family, space_path(family.name, REPO_SPACES))
        assert space.params["search_rows"] >= 0


def test_first_trial_uses_midpoints_snapped_to_the_step(tmp_path):
    f = tmp_path / "rf.yaml"
    f.write_text(
        "n_estimators: {type: int, low: 150, high: 300, step: 50}\ncriterion: {type: categorical, choices: [x, y]}\n"
    )
    assert first_params(load_space(f)) == {"n_estimators": 250, "criterion": "x"}
