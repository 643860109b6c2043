"""ensemble: an ensemble AutoML orchestrator for Kaggle's Digit Recognizer."""

from __future__ import annotations

__version__ = "0.1.0"
