"""Which Keras backend a command uses, and the one line when none is installed (ensemble.backends).

Each case runs a real child process in which a sitecustomize.py hides some packages (conftest.without_packages):
the parent test process has every backend installed, and may have Keras imported already.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from conftest import without_packages

from ensemble.backends import BACKENDS, choose_backend, installed_backends, is_installed

ALL = ("tensorflow", "jax", "torch")


def _ensemble(tmp_path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "ensemble", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_backends_are_the_three_keras_trains_with():
    assert BACKENDS == ALL
    assert set(installed_backends()) <= set(ALL)
    assert not is_installed("no_such_package_anywhere")
    assert not is_installed("")  # importlib's ValueError: not installed, no traceback


def test_no_backend_stops_every_command_with_one_line(tmp_path):
    env = without_packages(tmp_path, *ALL)
    assert _python("import importlib.util as u; print(u.find_spec('json') is not None)", env) == "True"
    for args in (["run", "--run", "x"], ["data", "check", str(tmp_path)], ["baselines", "--run", "x"]):
        done = _ensemble(tmp_path, *args, env=env)
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr
        assert done.stderr.splitlines() == [
            'error: no Keras backend is installed: pip install "ensemble[tensorflow]" (or jax, or torch)'
        ]
        assert done.stdout == ""
    assert not (tmp_path / "runs").exists()  # stopped before anything was created
    for args in (["--help"], ["--version"], ["run", "--help"]):  # these need no backend
        done = _ensemble(tmp_path, *args, env=env)
        assert done.returncode == 0 and done.stdout and "Traceback" not in done.stderr, done


def test_a_backend_asked_for_but_not_installed_is_one_line(tmp_path):
    env = without_packages(tmp_path, "torch")
    done = _ensemble(tmp_path, "run", "--run", "x", env={**env, "KERAS_BACKEND": "torch"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        'error: $KERAS_BACKEND torch: the torch package is not installed: pip install "ensemble[torch]"'
    ]
    done = _ensemble(tmp_path, "search", "--run", "x", "--backend", "torch", env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'error: --backend torch: the torch package is not installed: pip install "ensemble[torch]"'
    ]
    done = _ensemble(tmp_path, "data", "check", str(tmp_path), env={**env, "KERAS_BACKEND": "numpy"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: $KERAS_BACKEND numpy: not a Keras backend ensemble runs on; use tensorflow, jax, torch"
    ]


# the command fails on its own (no such data) after the backend was chosen, and the choice is in the
# environment that trial workers and the baselines child inherit
_CHOSEN = (
    "import os\n"
    "from ensemble.cli import main\n"
    "assert main(['data', 'check', 'no-such-folder']) == 2\n"
    "import sys; assert 'keras' not in sys.modules\n"
    "print(os.environ['KERAS_BACKEND'])\n"
)


@pytest.mark.skipif(not is_installed("jax"), reason="jax is not installed")
def test_without_tensorflow_jax_is_chosen_and_inherited(tmp_path):
    assert _python(_CHOSEN, without_packages(tmp_path, "tensorflow")) == "jax"
    assert _python(_CHOSEN, without_packages(tmp_path)) == installed_backends()[0]


@pytest.mark.skipif(not is_installed("torch"), reason="torch is not installed")
def test_the_environment_wins_over_the_first_installed(tmp_path):
    env = without_packages(tmp_path) | {"KERAS_BACKEND": "torch"}
    assert _python(_CHOSEN, env) == "torch"
    code = "from ensemble.backends import choose_backend; print(choose_backend('jax'), choose_backend())"
    assert _python(code, env) == "jax torch"  # the one asked for, else $KERAS_BACKEND


def test_an_imported_keras_keeps_its_backend(monkeypatch):
    """Keras picks its backend once, at import: a process that has it loaded tells its children the same one."""
    loaded = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", loaded)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert choose_backend() == "jax"
    other = installed_backends()[-1]
    assert choose_backend(other) == other  # asked for: cli.run refuses it when it differs from the loaded one
