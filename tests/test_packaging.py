"""What pip's resolver plans for the project: the core install never brings a Keras backend or XGBoost.

Offline and deterministic: setuptools (the build backend) writes the project's real metadata from
pyproject.toml; every distribution it names is a tiny stub wheel made here, at a version its specifiers
allow; pip resolves against those stubs only (``--no-index``, no configuration), for the Python of a
fresh virtual environment (``pip --python``), and ``--dry-run --report`` says what it would install.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

BACKENDS = {"tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch"}
HEAVY = {"xgboost", "nvidia-nccl-cu12"}
# pip sees none of this machine's configuration (indexes, find-links, constraints) and no cache
PIP_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}


def _setuptools_reads_pyproject() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return Version(setuptools.__version__) >= Version("77")  # license = "MIT", license-files


pytestmark = pytest.mark.skipif(
    not _setuptools_reads_pyproject(), reason="needs setuptools>=77 (the dev extra) to write the metadata offline"
)


def project_metadata(tmp_path: Path) -> str:
    """The METADATA that setuptools writes for the project (from a copy: nothing is written in the tree)."""
    src, out = tmp_path / "src", tmp_path / "metadata"
    src.mkdir()
    out.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("ensemble", "search_spaces"):  # the package folders pyproject lists
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys; from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    cmd = [sys.executable, "-c", code, str(out)]
    done = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return (out / done.stdout.split()[-1] / "METADATA").read_text()


def pick_version(specs: list[SpecifierSet]) -> str:
    """A version every one of ``specs`` allows: the highest version any of them names, if allowed, else 1.0."""
    named = sorted({Version(s.version) for spec in specs for s in spec}, reverse=True)
    for v in [*named, Version("1.0")]:
        if all(spec.contains(v, prereleases=True) for spec in specs):
            return str(v)
    raise AssertionError(f"no stub version satisfies {specs}")


def write_wheel(folder: Path, name: str, version: str, metadata_lines: list[str]) -> None:
    """A pure-Python wheel holding only its dist-info: enough for pip to install or plan it."""
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    files = {
        f"{info}/METADATA": "\n".join(metadata_lines) + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ensemble-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


def write_stubs(folder: Path, metadata: str) -> dict[str, str]:
    """Stub wheels of every distribution ``metadata`` requires (core and every extra), and of the project.

    Returns the stubs' versions by canonical name."""
    folder.mkdir()
    lines = metadata.split("\n\n", 1)[0].splitlines()  # the headers; the description follows a blank line
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    specs: dict[str, list[SpecifierSet]] = {}
    extras: dict[str, set[str]] = {}
    for r in reqs:
        name = canonicalize_name(r.name)
        specs.setdefault(name, []).append(r.specifier)
        extras.setdefault(name, set()).update(r.extras)
    versions = {name: pick_version(s) for name, s in specs.items()}
    for name, version in versions.items():
        provides = [f"Provides-Extra: {e}" for e in sorted(extras[name])]
        write_wheel(folder, name, version, ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *provides])
    project = dict(line.split(": ", 1) for line in lines if line.startswith(("Name:", "Version:")))
    write_wheel(folder, project["Name"], project["Version"], lines)
    return versions


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--quiet", *args]
    done = subprocess.run(cmd, env=PIP_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("packaging")
    metadata = project_metadata(tmp)
    folder = tmp / "stubs"
    return folder, write_stubs(folder, metadata)


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def planned(python: Path, stubs: Path, requirement: str, report: Path) -> set[str]:
    """The canonical names of what ``pip install requirement`` would install into ``python``'s environment."""
    pip(
        "--python", str(python), "install", "--dry-run", "--report", str(report), "--no-index",
        "--find-links", str(stubs), requirement,
    )  # fmt: skip
    return {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def test_stubs_cover_every_declared_distribution(stubs):
    _, versions = stubs
    assert {"keras", "optuna", "pandas", "tensorflow", "tensorflow-cpu", "jax", "torch", "xgboost"} <= set(versions)
    assert Version(versions["torch"]) == Version("2.13.0")  # the torch extra's floor and the dev extra's pin, both met
    assert Version(versions["optuna"]) >= Version("4.2")


def test_the_core_install_into_an_environment_with_tensorflow_plans_no_backend(stubs, tmp_path):
    folder, versions = stubs
    python = fresh_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-index", "--find-links", str(folder), "tensorflow")  # as Kaggle's
    plan = planned(python, folder, "ensemble", tmp_path / "report.json")
    assert "ensemble" in plan and "keras" in plan
    assert not plan & BACKENDS, plan  # tensorflow-cpu above all: it would replace the GPU build's files
    assert not plan & HEAVY, plan


def test_the_core_install_on_a_bare_machine_plans_no_backend_and_no_xgboost(stubs, tmp_path):
    folder, _ = stubs
    plan = planned(fresh_venv(tmp_path / "venv"), folder, "ensemble", tmp_path / "report.json")
    assert {"ensemble", "keras", "optuna", "scikit-learn", "pandas"} <= plan
    assert not plan & (BACKENDS | HEAVY), plan


def test_the_extras_bring_what_they_name(stubs, tmp_path):
    """Positive controls: the same resolver, asked for the extras, plans the backend and XGBoost."""
    folder, _ = stubs
    plan = planned(fresh_venv(tmp_path / "venv"), folder, "ensemble[tensorflow,xgboost]", tmp_path / "report.json")
    cpu_build = Marker("platform_system == 'Linux' and platform_machine == 'x86_64'").evaluate()
    assert (plan & BACKENDS) == ({"tensorflow-cpu"} if cpu_build else {"tensorflow"}), (plan, platform.machine())
    assert "xgboost" in plan
