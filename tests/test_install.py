"""The shipped search spaces: packaged in the wheel and found from any folder (ensemble.search.spaces.spaces_dir)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, write_dataset
from setuptools import find_packages

from ensemble.errors import SpaceError
from ensemble.pipeline.presets import PRESETS
from ensemble.search.baselines.models import FAMILIES
from ensemble.search.baselines.spaces import space_path
from ensemble.search.cnn.study import load_cnn_space
from ensemble.search.spaces import shipped_spaces, space_file, spaces_dir

CNN_SPACES = ("cnn.yaml", "cnn_quick.yaml", "cnn_best.yaml")
# what a source copy needs to build; build outputs and local state stay behind
_IGNORED = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")


def COPY_IGNORE(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: caches, and at the top only, the data, runs and build folders."""
    top = {"runs", "data", "build", "dist"} if Path(folder) == REPO else set()
    return set(_IGNORED(folder, names)) | (top & set(names))


def test_package_list_covers_every_subpackage():
    """pyproject lists packages by hand (a mapped package rules out packages.find): none may be missing."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(where=str(REPO), include=["ensemble", "ensemble.*"])
    assert sorted(cfg["packages"]) == sorted([*found, "ensemble.search_spaces"])
    assert cfg["package-dir"] == {"ensemble.search_spaces": "search_spaces"}
    assert (REPO / "search_spaces" / "__init__.py").is_file()


def test_spaces_dir_is_the_package_folder(tmp_path, monkeypatch):
    (tmp_path / "search_spaces").mkdir()  # a stray folder in the current folder is not picked up
    monkeypatch.chdir(tmp_path)
    here = spaces_dir()
    assert here.is_absolute()
    assert here == Path(importlib.util.find_spec("ensemble.search_spaces").origin).parent
    assert {*CNN_SPACES, *(f"{f}.yaml" for f in FAMILIES)} <= set(shipped_spaces())
    assert space_path("logreg") == here / "logreg.yaml"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_spaces_are_shipped(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = space_file(PRESETS[preset].space)
    assert path.parent == spaces_dir()
    assert path.is_file()
    load_cnn_space(path)


def test_space_file_user_paths_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert space_file("cnn_quick.yaml") == spaces_dir() / "cnn_quick.yaml"
    (tmp_path / "mine.yaml").write_text("epochs: 1\n")
    assert space_file("mine.yaml") == Path("mine.yaml")  # not shipped: a file here
    assert space_file(tmp_path / "other" / "x.yaml") == tmp_path / "other" / "x.yaml"  # paths used as given
    (tmp_path / "cnn.yaml").write_text("epochs: 1\n")
    assert space_file("./cnn.yaml") == Path("cnn.yaml")
    with pytest.raises(SpaceError, match=r"ambiguous.*write \./cnn\.yaml"):
        space_file("cnn.yaml")
    with pytest.raises(SpaceError, match=r"nope\.yaml: search-space file not found.*cnn_quick\.yaml"):
        space_file("nope.yaml")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_install_finds_shipped_spaces_from_another_folder(tmp_path):
    """``pip install .`` (not editable), then run from an empty folder: the spaces come from the wheel."""
    src = tmp_path / "src"  # build a copy: no build/ or egg-info written into the shared working tree
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q"]
    _run([*pip, "wheel", ".", "--no-deps", *isolation, "-w", str(wheels)], src, pip_env)
    (wheel,) = wheels.glob("ensemble-*.whl")
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, pip_env)
    assert (site / "ensemble" / "search_spaces" / "cnn_quick.yaml").is_file()
    assert (site / "ensemble" / "py.typed").is_file()  # PEP 561: the package's annotations are for type checkers
    (dist,) = site.glob("ensemble-*.dist-info")
    assert (dist / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "License-Expression: MIT" in (dist / "METADATA").read_text().splitlines()
    assert not (site / "search_spaces").exists()  # no top-level package of that name

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ENSEMBLE_DATA", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(site), "ENSEMBLE_RUNS": str(tmp_path / "runs"), "ENSEMBLE_CACHE": str(tmp_path / "c")}
    assert "--space FILE" in _run([sys.executable, "-m", "ensemble", "search", "--help"], empty, env)

    # the venv's editable install still maps ensemble.search_spaces to the repository, and would fill in
    # for a wheel that lacks the spaces: hence the checks of where the package and the spaces come from
    names = ",".join([*CNN_SPACES, *(f"{f}.yaml" for f in FAMILIES)])
    check = (
        "import ensemble, sys\n"
        "from pathlib import Path\n"
        "from ensemble.search.baselines.spaces import space_path\n"
        "from ensemble.pipeline.presets import PRESETS\n"
        "from ensemble.search.cnn.study import load_cnn_space\n"
        "from ensemble.search.spaces import shipped_spaces, space_file, spaces_dir\n"
        "site = Path(sys.argv[1]).resolve()\n"
        "assert Path(ensemble.__file__).resolve().is_relative_to(site), ensemble.__file__\n"
        "assert spaces_dir().resolve() == site / 'ensemble' / 'search_spaces', spaces_dir()\n"
        "missing = set(sys.argv[2].split(',')) - set(shipped_spaces())\n"
        "assert not missing, missing\n"
        "for p in PRESETS:\n"
        "    assert load_cnn_space(space_file(PRESETS[p].space)).path.resolve().is_relative_to(site)\n"
        "assert space_path('logreg').resolve().is_relative_to(site)\n"
        "print('ok', ensemble.__file__)\n"
    )
    out = _run([sys.executable, "-c", check, str(site), names], empty, env)
    assert out.startswith("ok ") and str(site) in out

    data = write_dataset(tmp_path / "data", n_train=300, n_test=30)
    args = ["baselines", "--run", "r", "--data", str(data), "--models", "logreg", "--trials", "1", "--no-refit"]
    out = _run([sys.executable, "-m", "ensemble", *args, "--jobs", "1"], empty, env)
    assert "logreg" in out and "done in" in out
    assert list((tmp_path / "runs" / "r").glob("models/baseline-logreg/trial-*/proba_val.npy")), out
    assert not (empty / "runs").exists()
