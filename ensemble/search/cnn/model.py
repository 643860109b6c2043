"""The CNN: built from a :class:`~ensemble.search.cnn.config.CnnConfig`, trained with backend-agnostic Keras 3.

Input is float32 (N, 28, 28, 1) raw pixels 0..255; rescaling and the training-time
augmentation (rotation, zoom, shift) are layers inside the model, so augmentation runs
in the training graph and the saved ``.keras`` model takes raw pixels on any backend.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ensemble.search.cnn.config import CnnConfig

if TYPE_CHECKING:
    import keras


class FitInfo(TypedDict):
    """What :func:`fit_model` measured."""

    epochs_run: int
    best_epoch: int  # the epoch whose weights the model keeps (the last without validation data)
    train_seconds: float
    images_per_second: float
    history: list[dict[str, float]]  # each epoch's logs


def backend_name() -> str:
    """The Keras backend that is (or will be) used."""
    import keras

    return keras.backend.backend()


def device_name() -> str:
    """'gpu' if the active backend sees a GPU, else 'cpu'."""
    b = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        if b == "jax":
            import jax

            return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
        if b == "torch":
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    except Exception:  # a backend without GPU support installed
        return "cpu"


def bn_momentum(n_train: int, config: CnnConfig) -> float:
    """BatchNorm's moving-average momentum: Keras's 0.99 once training has 1,000+ steps, else 0.9.

    With few steps (a few thousand digits) the 0.99 averages lag the weights, and the model in
    inference mode scores far below its training accuracy.
    """
    steps = math.ceil(n_train / config.batch_size) * config.epochs
    return 0.99 if steps >= 1000 else 0.9


def build_model(config: CnnConfig, *, momentum: float = 0.99) -> keras.Model:
    """Build (not compile) the CNN a config describes (``momentum``: BatchNorm's, see :func:`bn_momentum`)."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1), name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    if config.rotation > 0 or config.zoom > 0 or config.shift > 0:
        from ensemble.search.cnn.augment import RandomAffine

        x = RandomAffine(config.rotation, config.zoom, config.shift, name="augment")(x)
    filters = config.filters
    for block in range(config.conv_blocks):
        for _ in range(config.convs_per_block):
            x = layers.Conv2D(filters, config.kernel_size, padding="same", use_bias=not config.batch_norm)(x)
            if config.batch_norm:
                x = layers.BatchNormalization(momentum=momentum)(x)
            x = layers.Activation("relu")(x)
        if block < config.conv_blocks - 1 or config.conv_blocks < 3:
            if config.downsample == "maxpool":
                x = layers.MaxPooling2D(2)(x)
            else:
                x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        if config.conv_dropout > 0:
            x = layers.Dropout(config.conv_dropout)(x)
        filters *= 2
    x = layers.GlobalAveragePooling2D()(x) if config.head == "gap" else layers.Flatten()(x)
    x = layers.Dense(config.dense_units, activation="relu")(x)
    if config.dense_dropout > 0:
        x = layers.Dropout(config.dense_dropout)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="proba")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _schedule(config: CnnConfig, steps: int) -> keras.optimizers.schedules.LearningRateSchedule | float:
    import keras

    lr = float(config.learning_rate)
    sched = keras.optimizers.schedules
    if config.lr_schedule == "onecycle":
        warm = max(1, int(0.25 * steps))
        return sched.CosineDecay(lr / 20, steps - warm, alpha=1e-3, warmup_target=lr, warmup_steps=warm)
    if config.lr_schedule == "cosine":
        return sched.CosineDecay(lr, steps, alpha=1e-3)
    if config.lr_schedule == "exponential":
        return sched.ExponentialDecay(lr, decay_steps=max(1, steps // config.epochs), decay_rate=0.75)
    return lr


def compile_model(model: keras.Model, config: CnnConfig, n_train: int) -> None:
    """Attach optimizer, schedule and loss (label smoothing) to ``model``."""
    import keras

    steps = max(1, math.ceil(n_train / config.batch_size) * config.epochs)
    lr = _schedule(config, steps)
    wd = float(config.weight_decay) or None
    if config.optimizer == "adam":
        opt = keras.optimizers.Adam(lr)
    elif config.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=wd or 0.0)
    else:
        opt = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=float(config.label_smoothing))
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])


def as_input(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1), the models' input."""
    return np.asarray(x, np.float32).reshape(-1, 28, 28, 1)


def on_device(x: np.ndarray) -> Any:
    """``x`` copied once to the GPU (JAX or torch backend), so Keras slices batches there.

    On the CPU, and under TensorFlow (whose tf.data pipeline prefetches), ``x`` is returned as is.
    """
    if device_name() != "gpu":
        return x
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.device_put(x)
    if backend == "torch":
        import torch

        return torch.as_tensor(x, device="cuda")
    return x


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[np.asarray(y, np.int64)]


def fit_model(
    config: CnnConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    seed: int = 0,
    verbose: int = 0,
) -> tuple[keras.Model, FitInfo]:
    """Train a fresh model for ``config.epochs``: (the model with its best-val-accuracy weights, what it measured)."""
    import keras

    keras.utils.set_random_seed(seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_model(config, momentum=bn_momentum(len(x_train), config))
    compile_model(model, config, len(x_train))
    tracker = _BestEpoch(on_epoch)
    val = (on_device(as_input(x_val)), on_device(one_hot(y_val))) if x_val is not None else None
    t0 = time.perf_counter()
    model.fit(
        on_device(as_input(x_train)),
        on_device(one_hot(y_train)),
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=val,
        callbacks=[keras.callbacks.TerminateOnNaN(), tracker],
        verbose=verbose,
    )
    seconds = time.perf_counter() - t0
    keras.mixed_precision.set_global_policy("float32")
    if tracker.nan:
        raise FloatingPointError(f"loss became NaN at epoch {tracker.epochs_run}")
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)
    return model, {
        "epochs_run": tracker.epochs_run,
        "best_epoch": tracker.best_epoch if val is not None else tracker.epochs_run,
        "train_seconds": seconds,
        "images_per_second": len(x_train) * tracker.epochs_run / max(seconds, 1e-9),
        "history": tracker.history,
    }


class _BestEpoch:
    """Keras callback (duck-typed base) tracking per-epoch logs and the best weights."""

    def __new__(cls, on_epoch: Callable[[int, dict[str, float]], None] | None) -> keras.callbacks.Callback:
        import keras

        class Tracker(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.best, self.best_epoch, self.best_weights = -1.0, 0, None
                self.epochs_run, self.nan, self.history = 0, False, []

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = {k: float(v) for k, v in (logs or {}).items()}
                self.epochs_run = epoch + 1
                self.history.append(logs)
                if not np.isfinite(logs.get("loss", 0.0)):
                    self.nan = True
                    return
                acc = logs.get("val_accuracy")
                if acc is not None and acc > self.best:
                    self.best, self.best_epoch, self.best_weights = acc, epoch + 1, self.model.get_weights()
                if on_epoch is not None:
                    on_epoch(epoch + 1, logs)

            def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
                if logs and not np.isfinite(float(logs.get("loss", 0.0))):
                    self.nan = True

        return Tracker()


def predict_proba(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, 10) float32 for uint8 images (N, 28, 28)."""
    return np.asarray(model.predict(as_input(x), batch_size=batch_size, verbose=0), np.float32)


def count_params(model: keras.Model) -> int:
    return int(model.count_params())
