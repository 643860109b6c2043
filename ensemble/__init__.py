"""ensemble: an ensemble AutoML orchestrator for Kaggle's Digit Recognizer.

The pipeline, one subpackage per stage: :mod:`ensemble.data` -> :mod:`ensemble.search` (``cnn``,
``baselines``) -> :mod:`ensemble.combine` -> :mod:`ensemble.inference` -> :mod:`ensemble.report`, with
:mod:`ensemble.pipeline` on top and :mod:`ensemble.cli` as a thin layer. The public API is re-exported
here and imported on first use, so ``import ensemble`` (and ``ensemble --help``) stays fast::

    import ensemble

    run = ensemble.open_run("demo", data="demo")
    ensemble.run_pipeline("demo", data="demo", preset="quick")
    ens = ensemble.load_ensemble("runs/demo/ensemble")
    proba = ensemble.predict_proba(ens, images)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
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
    "__version__",
    "build_ensemble",
    "errors",
    "load_ensemble",
    "make_report",
    "open_run",
    "predict_proba",
    "run_pipeline",
]

if TYPE_CHECKING:
    from ensemble import errors
    from ensemble.combine.build import build_ensemble
    from ensemble.data.runs import open_run
    from ensemble.errors import EnsembleError
    from ensemble.inference.predict import load_ensemble, predict_proba
    from ensemble.pipeline.run import run_pipeline
    from ensemble.report.make import make_report


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    return module if name == "errors" else getattr(module, name)
