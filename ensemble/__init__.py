"""ensemble: an ensemble AutoML orchestrator for Kaggle's Digit Recognizer.

The pipeline, one subpackage per stage: :mod:`ensemble.data` -> :mod:`ensemble.search` (``cnn``,
``baselines``) -> :mod:`ensemble.combine` -> :mod:`ensemble.inference` -> :mod:`ensemble.report`, with
:mod:`ensemble.pipeline` on top, :mod:`ensemble.api` for Python and :mod:`ensemble.cli` as a thin layer.
The public API is re-exported here and imported on first use, so ``import ensemble`` (and
``ensemble --help``) stays fast.

``ensemble.fit(data=..., preset="quick", time_budget="20m")`` runs the whole job and returns a
:class:`Result`; ``ensemble.load(run)`` gives the same for a finished run (here ``RUN``, a small run
made for this example, and ``images``, a few of its test digits)::

    >>> import ensemble
    >>> result = ensemble.load(RUN)
    >>> result.leaderboard().columns[:3].tolist()
    ['model', 'kind', 'family']
    >>> result.predict(images).shape
    (5,)
    >>> bool((result.predict_proba(images).sum(axis=1).round(3) == 1).all())
    True
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "fit": "ensemble.api",
    "load": "ensemble.api",
    "Result": "ensemble.api",
    "HoldoutScore": "ensemble.api",
    "read_test_images": "ensemble.data.load",
    "open_run": "ensemble.data.runs",
    "run_pipeline": "ensemble.pipeline.run",
    "build_ensemble": "ensemble.combine.build",
    "load_ensemble": "ensemble.inference.predict",
    "predict_proba": "ensemble.inference.predict",
    "make_report": "ensemble.report.make",
    "errors": "ensemble.errors",
    "EnsembleError": "ensemble.errors",
}
__all__ = [
    "EnsembleError",
    "HoldoutScore",
    "Result",
    "__version__",
    "build_ensemble",
    "errors",
    "fit",
    "load",
    "load_ensemble",
    "make_report",
    "open_run",
    "predict_proba",
    "read_test_images",
    "run_pipeline",
]

if TYPE_CHECKING:
    from ensemble import errors
    from ensemble.api import HoldoutScore, Result, fit, load
    from ensemble.combine.build import build_ensemble
    from ensemble.data.load import read_test_images
    from ensemble.data.runs import open_run
    from ensemble.errors import EnsembleError
    from ensemble.inference.predict import load_ensemble, predict_proba
    from ensemble.pipeline.run import run_pipeline
    from ensemble.report.make import make_report


#: names whose modules load Keras: the backend is chosen first (ensemble.backends), as the CLI does
_KERAS_USERS = {"run_pipeline", "build_ensemble", "load_ensemble", "predict_proba", "make_report"}


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
    if name in _KERAS_USERS and "keras" not in sys.modules:
        from ensemble.backends import use_backend

        use_backend()  # $KERAS_BACKEND, else the first installed backend (Keras alone would assume TensorFlow)
    module = importlib.import_module(_API[name])
    return module if name == "errors" else getattr(module, name)
