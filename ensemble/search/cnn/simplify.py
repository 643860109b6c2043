"""Make prediction-only copies of Keras members: BatchNorm folded, inference no-ops removed.

Also counts a model's parameters and multiply-add FLOPs for the manifest and benchmarks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ensemble.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

_NO_OPS = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "RandomRotation", "RandomZoom")
_NO_OPS += ("RandomTranslation", "RandomFlip", "RandomContrast", "RandomBrightness", "RandomCrop", "RandomAffine")


def inference_model(model: keras.Model, check: np.ndarray | None = None, *, strict: bool = False) -> keras.Model:
    """A faster functional copy for prediction: BatchNormalization folded into the Conv2D/Dense
    before it (and a following ReLU into its activation), inference no-ops (dropout, random
    augmentation) made identities.

    Returns ``model`` itself when nothing folds or the model is not a functional graph. When the
    copy cannot be built or its outputs differ from the original's on a probe batch, a warning is
    logged and ``model`` is returned (``strict``: ArtifactError instead), so a folding regression
    shows up as a warning, not only as a slower prediction."""
    import keras

    try:
        cfg = model.get_config()
        entries = {e["name"]: e for e in cfg["layers"]}
    except (NotImplementedError, KeyError, TypeError):  # subclassed models: leave them alone
        return model
    if "input_layers" not in cfg or not all("inbound_nodes" in e for e in entries.values()):
        return model  # not a functional graph (e.g. Sequential)
    layers = {layer.name: layer for layer in model.layers}
    identity = keras.saving.serialize_keras_object(keras.layers.Identity())
    folded, changed = _fold_graph(cfg, entries, layers, identity)
    if not changed:
        return model
    try:
        fast = _rebuild(cfg, folded, layers)
        probe = check if check is not None else np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1))
        probe = np.asarray(probe, np.float32)
        out = [keras.ops.convert_to_numpy(m(probe, training=False)) for m in (fast, model)]  # eager: no tracing
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return _not_folded(model, f"the folded copy could not be built ({type(exc).__name__}: {exc})", strict)
    diff = float(np.abs(out[0] - out[1]).max())
    if diff > 1e-4:
        return _not_folded(model, f"the folded copy's outputs differ by {diff:.3g}", strict)
    return fast


def save_for_inference(model: keras.Model, path: str | Path) -> None:
    """Save the prediction copy of ``model`` (:func:`inference_model`): no training-only layers, so the
    file loads with plain ``keras.models.load_model`` in a Python that never imported ``ensemble``."""
    inference_model(model).save(path)


def _not_folded(model: keras.Model, why: str, strict: bool) -> keras.Model:
    if strict:
        raise ArtifactError(f"{model.name}: BatchNorm folding failed: {why}")
    log.warning("%s: predicting with the unfolded model (slower): %s", model.name, why)
    return model


def _fold_graph(
    cfg: dict[str, Any], entries: dict[str, Any], layers: dict[str, keras.layers.Layer], identity: dict[str, Any]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """Rewrite ``cfg`` in place: no-ops and folded BatchNorms become identities. Returns the folded weights."""
    users: dict[str, list[str]] = {n: [] for n in entries}
    for e in cfg["layers"]:
        for node in e.get("inbound_nodes", []):
            for src in _sources(node):
                users[src].append(e["name"])
    outputs = set(users) & set(_flat_strings(cfg["output_layers"]))
    folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    changed = False
    for name, e in entries.items():
        if e["class_name"] in _NO_OPS:
            _to_identity(e, identity)
            changed = True
        if e["class_name"] != "BatchNormalization" or len(e["inbound_nodes"]) != 1:
            continue
        srcs = _sources(e["inbound_nodes"][0])
        src = srcs[0] if len(srcs) == 1 else None
        bn, conv = layers[name], layers.get(src)
        if (
            conv is None
            or type(conv).__name__ not in ("Conv2D", "Dense")
            or users[src] != [name]
            or src in outputs
            or entries[src]["config"].get("activation") != "linear"
            or bn.axis not in (-1, len(conv.output.shape) - 1)
        ):
            continue
        folded[src] = _folded_weights(bn, conv)
        entries[src]["config"] = {**entries[src]["config"], "use_bias": True}
        _to_identity(e, identity)
        nxt = users[name]
        if len(nxt) == 1 and entries[nxt[0]]["class_name"] == "Activation" and name not in outputs:
            if entries[nxt[0]]["config"].get("activation") == "relu":
                entries[src]["config"]["activation"] = "relu"
                entries[nxt[0]]["config"]["activation"] = "linear"
        changed = True
    return folded, changed


def _folded_weights(bn: keras.layers.BatchNormalization, conv: keras.layers.Layer) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``conv`` followed by the inference-mode BatchNormalization ``bn``."""
    gamma = np.asarray(bn.gamma.numpy() if bn.scale else 1.0, np.float64)
    beta = np.asarray(bn.beta.numpy() if bn.center else 0.0, np.float64)
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon)
    w = conv.get_weights()
    bias = np.asarray(w[1], np.float64) if conv.use_bias else 0.0
    return w[0] * scale, (bias - np.asarray(bn.moving_mean.numpy(), np.float64)) * scale + beta


def _rebuild(
    cfg: dict[str, Any], folded: dict[str, tuple[np.ndarray, np.ndarray]], layers: dict[str, keras.layers.Layer]
) -> keras.Model:
    import keras

    fast = keras.Model.from_config(cfg)
    for layer in fast.layers:
        if layer.name in folded:
            k, b = folded[layer.name]
            layer.set_weights([k.astype(np.float32), b.astype(np.float32)])
        elif layer.weights:
            layer.set_weights(layers[layer.name].get_weights())
    return fast


def _to_identity(entry: dict[str, Any], identity: dict[str, Any]) -> None:
    """Turn a serialized layer into an Identity with the same name and inputs."""
    entry.update({k: v for k, v in identity.items() if k != "config"}, config={**identity["config"]})
    entry["config"]["name"] = entry["name"]
    entry["inbound_nodes"] = [{"args": n["args"], "kwargs": {}} for n in entry["inbound_nodes"]]


def _sources(obj: object) -> list[str]:
    """Names of the layers whose outputs a serialized inbound node reads."""
    if isinstance(obj, dict):
        hist = obj.get("config", {}).get("keras_history") if isinstance(obj.get("config"), dict) else None
        if hist:
            return [hist[0]]
        return [n for v in obj.values() for n in _sources(v)]
    if isinstance(obj, list | tuple):
        return [n for v in obj for n in _sources(v)]
    return []


def _flat_strings(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    return [n for v in obj for n in _flat_strings(v)] if isinstance(obj, list | tuple) else []


def model_cost(model: keras.Model) -> dict[str, int]:
    """Parameters and forward FLOPs per image (2 x multiply-adds of Conv2D, DepthwiseConv2D and Dense)."""
    flops = 0
    for layer in _layers(model):
        kind = type(layer).__name__
        w = getattr(layer, "kernel", None)
        if w is None or kind not in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            continue
        out = layer.output.shape if hasattr(layer, "output") else None
        spatial = int(np.prod([d for d in out[1:-1] if d])) if out is not None and len(out) > 2 else 1
        if kind == "SeparableConv2D":
            kh, kw, cin, mult = layer.depthwise_kernel.shape
            flops += 2 * spatial * (kh * kw * cin * mult + cin * mult * layer.pointwise_kernel.shape[-1])
        else:
            flops += 2 * spatial * int(np.prod(w.shape))
    return {"params": int(model.count_params()), "flops": int(flops)}


def _layers(model: keras.Model | keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


#: Precisions ``member_probas`` computes in: float32 (the default) or bfloat16 (opt-in, see :func:`bfloat16_model`).
PRECISIONS = ("float32", "bfloat16")
PRECISION_ENV = "ENSEMBLE_PREDICT_PRECISION"


def resolve_precision(precision: str | None = None) -> str:
    """``precision``, else ``$ENSEMBLE_PREDICT_PRECISION``, else float32; checked against PRECISIONS."""
    value = (precision or os.environ.get(PRECISION_ENV) or "float32").strip().lower()
    if value not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got '{value}' (${PRECISION_ENV})")
    return value


def native_bfloat16() -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo)?

    Without them oneDNN emulates bfloat16 and it is slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bfloat16_model(model: keras.Model) -> keras.Model:
    """A copy of a functional ``model`` that computes in bfloat16 with float32 weights (Keras's
    ``mixed_bfloat16`` policy) and keeps its output layer (the softmax) in float32.

    Opt-in only: bfloat16 keeps 8 significant bits, so probabilities move by ~1e-3 and a digit the
    members find nearly tied can change label. Measured 3-4x faster than float32 on a 2-core Xeon
    with AMX (oneDNN runs the convolutions as AMX bf16 tiles). Returns ``model`` itself when it is
    not a functional graph.
    """
    import keras

    try:
        cfg = model.get_config()
        layers = cfg["layers"]
        last = set(_flat_strings(cfg["output_layers"]))
    except Exception:  # subclassed or Sequential: leave it alone
        return model
    for entry in layers:
        dtype = entry.get("config", {}).get("dtype")
        if entry["name"] in last or entry["class_name"] == "InputLayer":
            continue
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
            dtype["config"] = {**dtype.get("config", {}), "name": "mixed_bfloat16"}
        elif dtype is None or dtype == "float32":
            entry["config"]["dtype"] = "mixed_bfloat16"
    try:
        fast = keras.Model.from_config(cfg)
        fast.set_weights(model.get_weights())
    except Exception:
        return model
    return fast
