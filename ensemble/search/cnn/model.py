"""The CNN: built from a config dict, trained with backend-agnostic Keras 3.

Input is float32 (N, 28, 28, 1) raw pixels 0..255; rescaling and the training-time
augmentation (rotation, zoom, shift) are layers inside the model, so augmentation runs
in the training graph and the saved ``.keras`` model takes raw pixels on any backend.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.errors import SpaceError

if TYPE_CHECKING:
    import keras

# Every key a config may hold, with its default. search_spaces/cnn.yaml overrides any of them.
DEFAULTS: dict[str, Any] = {
    # architecture
    "conv_blocks": 3,
    "filters": 24,  # first block; doubled each block
    "convs_per_block": 1,
    "kernel_size": 3,
    "batch_norm": True,
    "downsample": "maxpool",  # maxpool | strided
    "conv_dropout": 0.1,
    "head": "flatten",  # flatten | gap (global average pooling)
    "dense_units": 128,
    "dense_dropout": 0.3,
    # training
    "optimizer": "adamw",  # adam | adamw | sgd (Nesterov momentum 0.9)
    "learning_rate": 4e-3,
    "lr_schedule": "onecycle",  # onecycle | cosine | exponential | constant
    "weight_decay": 1e-4,
    "label_smoothing": 0.05,
    "batch_size": 128,
    "epochs": 8,
    # augmentation (training only)
    "rotation": 8.0,  # degrees
    "zoom": 0.08,  # fraction
    "shift": 0.08,  # fraction of the image size
    "mixed_precision": False,
}
CHOICES = {
    "downsample": ("maxpool", "strided"),
    "head": ("flatten", "gap"),
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_schedule": ("onecycle", "cosine", "exponential", "constant"),
}


def validate_config(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Fill defaults and check every value; raises SpaceError naming the key."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)} (known keys: {', '.join(DEFAULTS)})")
    cfg = {**DEFAULTS, **config}
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise SpaceError(f"{where}: key '{key}': {cfg[key]!r} is not one of {', '.join(allowed)}")
    positive_int = ("conv_blocks", "filters", "convs_per_block", "kernel_size", "dense_units", "batch_size", "epochs")
    for key in positive_int:
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise SpaceError(f"{where}: key '{key}': must be a positive integer, got {cfg[key]!r}")
    for key in ("batch_norm", "mixed_precision"):
        if not isinstance(cfg[key], bool):
            raise SpaceError(f"{where}: key '{key}': must be true or false, got {cfg[key]!r}")
    for key in (
        "conv_dropout",
        "dense_dropout",
        "zoom",
        "shift",
        "label_smoothing",
        "rotation",
        "learning_rate",
        "weight_decay",
    ):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | float):
            raise SpaceError(f"{where}: key '{key}': must be a number, got {cfg[key]!r}")
    if cfg["conv_blocks"] > 4:
        raise SpaceError(f"{where}: key 'conv_blocks': at most 4 blocks fit a 28x28 image, got {cfg['conv_blocks']}")
    for key in ("conv_dropout", "dense_dropout", "zoom", "shift", "label_smoothing"):
        if not 0 <= float(cfg[key]) < 1:
            raise SpaceError(f"{where}: key '{key}': must be in [0, 1), got {cfg[key]!r}")
    if not 0 <= float(cfg["rotation"]) <= 45:
        raise SpaceError(f"{where}: key 'rotation': degrees must be in [0, 45], got {cfg['rotation']!r}")
    if not 0 < float(cfg["learning_rate"]) < 10 or float(cfg["weight_decay"]) < 0:
        raise SpaceError(f"{where}: key 'learning_rate'/'weight_decay' out of range")
    return cfg


def validate_space(params: Mapping[str, Any], where: str) -> None:
    """Check every value a search space can give: fixed values, each choice, both ends of each range."""
    validate_config({k: v for k, v in params.items() if not isinstance(v, dict)}, where=where)
    for key, spec in params.items():
        if isinstance(spec, dict):
            for value in spec["choices"] if spec["type"] == "categorical" else (spec["low"], spec["high"]):
                validate_config({key: value}, where=where)


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


def bn_momentum(n_train: int, config: dict[str, Any]) -> float:
    """BatchNorm's moving-average momentum: Keras's 0.99 once training has 1,000+ steps, else 0.9.

    With few steps (a few thousand digits) the 0.99 averages lag the weights, and the model in
    inference mode scores far below its training accuracy.
    """
    c = validate_config(config)
    steps = math.ceil(n_train / c["batch_size"]) * c["epochs"]
    return 0.99 if steps >= 1000 else 0.9


def build_model(config: dict[str, Any], *, momentum: float = 0.99) -> keras.Model:
    """Build (not compile) the CNN a config describes (``momentum``: BatchNorm's, see :func:`bn_momentum`)."""
    import keras
    from keras import layers

    c = validate_config(config)
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    if c["rotation"] > 0 or c["zoom"] > 0 or c["shift"] > 0:
        from ensemble.search.cnn.augment import RandomAffine

        x = RandomAffine(c["rotation"], c["zoom"], c["shift"], name="augment")(x)
    filters = c["filters"]
    for block in range(c["conv_blocks"]):
        for _ in range(c["convs_per_block"]):
            x = layers.Conv2D(filters, c["kernel_size"], padding="same", use_bias=not c["batch_norm"])(x)
            if c["batch_norm"]:
                x = layers.BatchNormalization(momentum=momentum)(x)
            x = layers.Activation("relu")(x)
        if block < c["conv_blocks"] - 1 or c["conv_blocks"] < 3:
            if c["downsample"] == "maxpool":
                x = layers.MaxPooling2D(2)(x)
            else:
                x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        if c["conv_dropout"] > 0:
            x = layers.Dropout(c["conv_dropout"])(x)
        filters *= 2
    x = layers.GlobalAveragePooling2D()(x) if c["head"] == "gap" else layers.Flatten()(x)
    x = layers.Dense(c["dense_units"], activation="relu")(x)
    if c["dense_dropout"] > 0:
        x = layers.Dropout(c["dense_dropout"])(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="proba")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _schedule(c: dict[str, Any], steps: int) -> Any:
    import keras

    lr = float(c["learning_rate"])
    sched = keras.optimizers.schedules
    if c["lr_schedule"] == "onecycle":
        warm = max(1, int(0.25 * steps))
        return sched.CosineDecay(lr / 20, steps - warm, alpha=1e-3, warmup_target=lr, warmup_steps=warm)
    if c["lr_schedule"] == "cosine":
        return sched.CosineDecay(lr, steps, alpha=1e-3)
    if c["lr_schedule"] == "exponential":
        return sched.ExponentialDecay(lr, decay_steps=max(1, steps // c["epochs"]), decay_rate=0.75)
    return lr


def compile_model(model: keras.Model, config: dict[str, Any], n_train: int) -> None:
    """Attach optimizer, schedule and loss (label smoothing) to ``model``."""
    import keras

    c = validate_config(config)
    steps = max(1, math.ceil(n_train / c["batch_size"]) * c["epochs"])
    lr = _schedule(c, steps)
    wd = float(c["weight_decay"]) or None
    if c["optimizer"] == "adam":
        opt = keras.optimizers.Adam(lr)
    elif c["optimizer"] == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=wd or 0.0)
    else:
        opt = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=float(c["label_smoothing"]))
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
    config: dict[str, Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    seed: int = 0,
    verbose: int = 0,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh model; returns (model with its best-val-accuracy weights, info)."""
    import keras

    c = validate_config({**config, **({"epochs": epochs} if epochs else {})})
    keras.utils.set_random_seed(seed)
    if c["mixed_precision"]:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_model(c, momentum=bn_momentum(len(x_train), c))
    compile_model(model, c, len(x_train))
    tracker = _BestEpoch(on_epoch)
    val = (on_device(as_input(x_val)), on_device(one_hot(y_val))) if x_val is not None else None
    t0 = time.perf_counter()
    model.fit(
        on_device(as_input(x_train)),
        on_device(one_hot(y_train)),
        batch_size=c["batch_size"],
        epochs=c["epochs"],
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

    def __new__(cls, on_epoch: Callable[[int, dict[str, float]], None] | None) -> Any:
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
