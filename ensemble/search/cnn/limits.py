"""When a trainer process is replaced, its share of its GPU, and the environment it starts with
(see :mod:`ensemble.search.cnn.pool`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ensemble.search.devices import VISIBLE_ENV, Device

RECYCLE_AFTER = 10  # trials per trainer process (TensorFlow: ~22 MiB kept per model)
MAX_RSS_MB = 4096.0  # a trainer above this resident memory after a trial is replaced
GPU_SHARE = 0.9  # of a GPU's memory, for all its trainers together (JAX caps each at its part)
ENV_PREFIXES = ("KERAS_", "TF_", "CUDA_", "XLA_", "JAX_")


@dataclass(frozen=True)
class TrainerLimits:
    """When a trainer process is replaced, and what share of the GPU each one may take."""

    recycle_after: int = RECYCLE_AFTER
    max_rss_mb: float = MAX_RSS_MB
    trainers: int = 1  # at most this many at once per device: each caps its GPU memory at GPU_SHARE / trainers
    compile_cache: str | None = None  # a folder for JAX's persistent compilation cache (None: off)


def trainer_env(limits: TrainerLimits, device: Device | None = None) -> dict[str, str]:
    """The environment of a trainer: the backend's variables, its device, and its GPU memory cap unless already set."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    if device is not None and device.visible is not None:
        env[VISIBLE_ENV] = device.visible  # pinned: the backend, imported after this, sees that GPU only
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{GPU_SHARE / max(1, limits.trainers):.3f}")
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if limits.compile_cache:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", limits.compile_cache)
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return env
