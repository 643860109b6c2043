"""Memory between trials in one trainer process: the Keras session cleared, garbage collected, and the
freed heap pages handed back to the OS (see ``ensemble.search.cnn.pool``, which recycles trainers too)."""

from __future__ import annotations

import gc


def release() -> None:
    """Free the Keras graph/session and Python garbage between trials."""
    import keras

    keras.backend.clear_session(free_memory=True)
    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so RSS only grows)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
