"""The Keras backend: which ones are installed, and which one this process (and its children) use.

The project installs no backend of its own (an environment with TensorFlow, JAX or PyTorch keeps it:
Kaggle's and Colab's images hold their GPU builds), so the choice is made here, before Keras is imported:
the one asked for, else ``$KERAS_BACKEND``, else the first installed of tensorflow, jax, torch. Nothing
heavy is imported to find out: :func:`installed_backends` only looks the packages up.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from ensemble.errors import UsageError

BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")
ENV = "KERAS_BACKEND"
INSTALL_ANY = 'pip install "ensemble[tensorflow]" (or jax, or torch)'


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-removed installation
        return False


def installed_backends() -> tuple[str, ...]:
    """The Keras backends whose package is installed, in order of preference."""
    return tuple(b for b in BACKENDS if is_installed(b))


def choose_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$KERAS_BACKEND``, else the one of a Keras already imported in
    this process, else the first installed one (``~/.keras/keras.json`` is not read: Keras writes its
    default there on first import).

    Raises UsageError (one line, saying what to install) when none is installed, when the one asked for
    is not, or when it is not a backend this package trains with.
    """
    source = "--backend"
    if not name:
        name, source = os.environ.get(ENV, "").strip(), f"${ENV}"
    if name:
        if name not in BACKENDS:
            raise UsageError(f"{source} {name}: not a Keras backend ensemble runs on; use {', '.join(BACKENDS)}")
        if not is_installed(name):
            raise UsageError(f'{source} {name}: the {name} package is not installed: pip install "ensemble[{name}]"')
        return name
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):  # Keras picked its backend once, at import
        return str(keras.backend.backend())
    found = installed_backends()
    if not found:
        raise UsageError(f"no Keras backend is installed: {INSTALL_ANY}")
    return found[0]


def use_backend(name: str | None = None) -> str:
    """Choose the backend (:func:`choose_backend`) and put it in ``$KERAS_BACKEND``, for Keras and every child.

    Also quiets TensorFlow's native start-up logging, and keeps JAX from preallocating GPU memory: trainer
    processes share the GPU, each capping its own share (see ensemble.search.cnn.pool).
    """
    chosen = choose_backend(name)
    os.environ[ENV] = chosen
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return chosen
