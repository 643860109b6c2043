"""An ensemble's CNN members spread over the backend's devices for prediction (JAX): member i on device i mod D.

Under JAX, with more than one local device (several GPUs; on a CPU, ``XLA_FLAGS=
--xla_force_host_platform_device_count=N`` makes N host devices), each member is loaded under
``jax.default_device`` of its device, so its weights live there, and predicts there
(:class:`OnDevice`); :func:`ensemble.combine.members.member_probas` then runs one thread per device.
TensorFlow and torch members stay on their backend's default device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax
    import keras
    import numpy as np


def prediction_devices() -> list[jax.Device]:
    """The JAX devices to spread members over: every local device of the default platform; [] when not JAX or one."""
    import keras

    if keras.backend.backend() != "jax":
        return []
    import jax

    devices = jax.local_devices()
    return devices if len(devices) > 1 else []


@contextlib.contextmanager
def on(device: jax.Device | None) -> Iterator[None]:
    """Arrays created and computations run under this block go to ``device`` (None: the default one)."""
    if device is None:
        yield
        return
    import jax

    with jax.default_device(device):
        yield


class OnDevice:
    """A model that predicts on the device it was loaded on (its weights are there)."""

    def __init__(self, model: keras.Model, device: jax.Device | None) -> None:
        self.model, self.device = model, device

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        with on(self.device):
            return self.model.predict_on_batch(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
