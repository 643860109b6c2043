"""Load a built ensemble (hash-checked) and predict class probabilities, with TTA.

The ensemble folder is self-contained: ``manifest.json`` lists the members, their weights,
the TTA views and the sha256 of every artifact, so ``ensemble predict`` works on a machine
that never saw the run. Members are ``.keras`` files, which load under any Keras 3 backend
(TensorFlow, JAX, torch) whatever backend trained them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.artifacts import sha256_file
from ensemble.errors import ArtifactError, DataError, UsageError
from ensemble.io import atomic_write, read_json
from ensemble.tta import IDENTITY, SIDE, stack_views

MANIFEST = "manifest.json"
FORMAT = "ensemble-manifest/1"
N_CLASSES = 10
INPUT_SPEC = "float32 (N, 28, 28, 1) raw pixel values 0-255; rescaling is inside each model"
Advance = Callable[[int], None]


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of uint8 images and their shape: identifies a test set."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    return h.hexdigest()


def as_images(x: np.ndarray, what: str = "images") -> np.ndarray:
    """(N, 28, 28) uint8 images from (N, 28, 28), (N, 28, 28, 1) or (N, 784), else a clear DataError."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == SIDE * SIDE:
        a = a.reshape(-1, SIDE, SIDE)
    elif a.ndim == 4 and a.shape[1:] == (SIDE, SIDE, 1):
        a = a[..., 0]
    if a.ndim != 3 or a.shape[1:] != (SIDE, SIDE) or len(a) == 0:
        raise DataError(f"{what}: expected shape (N, 28, 28) or (N, 784) with N > 0, got {a.shape}")
    if a.dtype != np.uint8:
        if np.any((a < 0) | (a > 255)) or not np.all(np.isfinite(a)):
            raise DataError(f"{what}: pixel values must be raw 0-255")
        a = a.astype(np.uint8)
    return a


def load_keras_model(path: str | Path, name: str = "") -> Any:
    """Load a ``.keras`` member under the current backend and check its input and output shapes."""
    import keras

    try:  # registers the CNN search's custom layers, if it defines any
        import ensemble.cnn  # noqa: F401
    except ImportError:
        pass
    label = name or str(path)
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise ArtifactError(f"{path}: cannot load Keras model for member {label}: {exc}") from exc
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or shape[1:] not in ((SIDE, SIDE, 1), (None, None, 1)):
        raise ArtifactError(f"{path}: member {label} expects input {model.input_shape}, not (N, 28, 28, 1)")
    if tuple(model.output_shape)[1:] != (N_CLASSES,):
        raise ArtifactError(f"{path}: member {label} outputs {model.output_shape}, not (N, 10) probabilities")
    return model


#: Layers that are the identity at inference.
_NO_OPS = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "RandomRotation", "RandomZoom")
_NO_OPS += ("RandomTranslation", "RandomFlip", "RandomContrast", "RandomBrightness", "RandomCrop")


def inference_model(model: Any, check: np.ndarray | None = None) -> Any:
    """A faster functional copy for prediction: BatchNormalization folded into the Conv2D/Dense
    before it (and a following ReLU into its activation), inference no-ops (dropout, random
    augmentation) made identities. Returns ``model`` itself when nothing folds, the model is not
    functional, or the copy's outputs differ from the original's on a probe batch."""
    import keras

    try:
        cfg = model.get_config()
        entries = {e["name"]: e for e in cfg["layers"]}
    except Exception:  # subclassed models: leave them alone
        return model
    if "input_layers" not in cfg or not all("inbound_nodes" in e for e in entries.values()):
        return model  # not a functional graph (e.g. Sequential)
    users: dict[str, list[str]] = {n: [] for n in entries}
    for e in cfg["layers"]:
        for node in e.get("inbound_nodes", []):
            for src in _sources(node):
                users[src].append(e["name"])
    outputs = set(users) & set(_flat_strings(cfg["output_layers"]))
    layers = {layer.name: layer for layer in model.layers}
    identity = keras.saving.serialize_keras_object(keras.layers.Identity())
    folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    changed = False
    for name, e in entries.items():
        kind = e["class_name"]
        if kind in _NO_OPS:
            _to_identity(e, identity)
            changed = True
        if kind != "BatchNormalization" or len(e["inbound_nodes"]) != 1:
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
        gamma = np.asarray(bn.gamma.numpy() if bn.scale else 1.0, np.float64)
        beta = np.asarray(bn.beta.numpy() if bn.center else 0.0, np.float64)
        scale = gamma / np.sqrt(np.asarray(bn.moving_variance.numpy(), np.float64) + bn.epsilon)
        w = conv.get_weights()
        bias = np.asarray(w[1], np.float64) if conv.use_bias else 0.0
        folded[src] = (w[0] * scale, (bias - np.asarray(bn.moving_mean.numpy(), np.float64)) * scale + beta)
        entries[src]["config"] = {**entries[src]["config"], "use_bias": True}
        _to_identity(e, identity)
        nxt = users[name]
        if len(nxt) == 1 and entries[nxt[0]]["class_name"] == "Activation" and name not in outputs:
            if entries[nxt[0]]["config"].get("activation") == "relu":
                entries[src]["config"]["activation"] = "relu"
                entries[nxt[0]]["config"]["activation"] = "linear"
        changed = True
    if not changed:
        return model
    try:
        fast = keras.Model.from_config(cfg)
        for layer in fast.layers:
            if layer.name in folded:
                k, b = folded[layer.name]
                layer.set_weights([k.astype(np.float32), b.astype(np.float32)])
            elif layer.weights:
                layer.set_weights(layers[layer.name].get_weights())
        probe = check if check is not None else np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1))
        probe = np.asarray(probe, np.float32)
        out = [keras.ops.convert_to_numpy(m(probe, training=False)) for m in (fast, model)]  # eager: no tracing
        diff = float(np.abs(out[0] - out[1]).max())
    except Exception:  # any surprise: predict with the original model
        return model
    return fast if diff <= 1e-4 else model


def _to_identity(entry: dict[str, Any], identity: dict[str, Any]) -> None:
    """Turn a serialized layer into an Identity with the same name and inputs."""
    entry.update({k: v for k, v in identity.items() if k != "config"}, config={**identity["config"]})
    entry["config"]["name"] = entry["name"]
    entry["inbound_nodes"] = [{"args": n["args"], "kwargs": {}} for n in entry["inbound_nodes"]]


def _sources(obj: Any) -> list[str]:
    """Names of the layers whose outputs a serialized inbound node reads."""
    if isinstance(obj, dict):
        hist = obj.get("config", {}).get("keras_history") if isinstance(obj.get("config"), dict) else None
        if hist:
            return [hist[0]]
        return [n for v in obj.values() for n in _sources(v)]
    if isinstance(obj, list | tuple):
        return [n for v in obj for n in _sources(v)]
    return []


def _flat_strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    return [n for v in obj for n in _flat_strings(v)] if isinstance(obj, list | tuple) else []


def model_cost(model: Any) -> dict[str, int]:
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


def _layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


def member_probas(
    models: Sequence[Any],
    images: np.ndarray,
    views: Sequence[str],
    *,
    batch_size: int = 128,
    advance: Advance | None = None,
    names: Sequence[str] = (),
    workers: int | None = None,
) -> np.ndarray:
    """Probabilities of every model under every view: float32 (M, V, N, 10).

    Each batch of ``batch_size`` images is expanded to all its views (view-major) and given to
    each model in one ``predict_on_batch`` call. ``workers`` batches run at once in threads
    (backends release the GIL while computing), which keeps both cores of a small CPU busy.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    images = as_images(images)
    n, v = len(images), len(views)
    out = np.empty((len(models), v, n, N_CLASSES), np.float32)

    def run_batch(start: int) -> None:
        chunk = images[start : start + batch_size]
        b = len(chunk)
        xb = stack_views(views, chunk)
        for m, model in enumerate(models):
            p = np.asarray(model.predict_on_batch(xb), dtype=np.float32)
            if p.shape != (v * b, N_CLASSES):
                raise ArtifactError(f"member {_name(names, m)}: output shape {p.shape}, expected ({v * b}, 10)")
            if start == 0 and (p.min() < -1e-4 or np.abs(p.sum(axis=1) - 1).max() > 1e-3):
                raise ArtifactError(f"member {_name(names, m)}: outputs are not softmax probabilities")
            out[m, :, start : start + b] = p.reshape(v, b, N_CLASSES)
        if advance is not None:
            advance(b)

    workers = default_workers() if workers is None else workers
    starts = list(range(0, n, batch_size))
    run_batch(starts[0])  # first batch alone: traces/compiles each model once, checks outputs
    if workers <= 1 or len(starts) < 3:
        for start in starts[1:]:
            run_batch(start)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for fut in [pool.submit(run_batch, start) for start in starts[1:]]:
                fut.result()
    return out


def default_workers() -> int:
    """Batches predicted at once. Two threads keep both cores of a small CPU busy: measured on
    2 cores, 20-30% faster under TensorFlow, up to 1.5x under torch, the same under JAX."""
    return 2


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if i < len(names) else f"#{i}"


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Advance]:
    """A rich progress bar on stderr (images done, rate, time left); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# ------------------------------------------------------------------------------ ensemble


@dataclass
class Member:
    """One ensemble member: a Keras model (CNN) or stored probabilities (baseline)."""

    name: str
    kind: str
    weight: float
    file: str | None = None
    probas: dict[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    model: Any = None


@dataclass
class Ensemble:
    """A loaded, hash-verified ensemble folder."""

    folder: Path
    manifest: dict[str, Any]
    members: list[Member]

    @property
    def views(self) -> list[str]:
        return list(self.manifest["tta"]["views"])


def _safe_path(folder: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ArtifactError(f"{folder / MANIFEST}: artifact path '{rel}' leaves the ensemble folder")
    return folder / p


def verify_artifacts(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse any artifact that is missing or whose sha256 differs from the manifest, naming it."""
    for rel, expected in manifest.get("artifacts", {}).items():
        path = _safe_path(folder, rel)
        if not path.exists():
            raise ArtifactError(f"{path}: missing, but listed in {MANIFEST}")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: sha256 {actual[:16]}... does not match {MANIFEST} ({expected[:16]}...); "
                "the file changed after `ensemble build`, refusing to load it"
            )


def load_ensemble(folder: str | Path, *, load_models: bool = True) -> Ensemble:
    """Read ``manifest.json``, verify every artifact's hash, then load the member models."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: missing; expected an ensemble folder written by `ensemble build`")
    try:
        manifest = read_json(mpath)
    except ValueError as exc:
        raise ArtifactError(f"{mpath}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not an ensemble manifest (format {FORMAT} expected)")
    verify_artifacts(folder, manifest)
    hashed = set(manifest["artifacts"])
    members = []
    for entry in manifest["members"]:
        m = Member(
            entry["name"],
            entry["kind"],
            float(entry["weight"]),
            entry.get("file"),
            entry.get("probas", {}),
            entry.get("model_dir"),
        )
        files = [m.file] if m.file else []
        if m.model_dir:
            files += [r for r in hashed if r.startswith(m.model_dir + "/")] or [m.model_dir + "/"]
        for rel in files + list(m.probas.values()):
            if rel not in hashed:
                raise ArtifactError(f"{folder / rel}: member {m.name}'s file has no sha256 in {MANIFEST}")
        if m.kind == "cnn" and not m.file:
            raise ArtifactError(f"{mpath}: CNN member {m.name} has no model file")
        members.append(m)
    if not members:
        raise ArtifactError(f"{mpath}: no members")
    if load_models:
        for m in members:
            if m.file:
                m.model = inference_model(load_keras_model(folder / m.file, m.name))
    return Ensemble(folder, manifest, members)


def _baseline(ens: Ensemble, m: Member, images: np.ndarray) -> np.ndarray:
    """A baseline's probabilities: stored ones for the run's own test set, else its saved model's."""
    data = ens.manifest["data"]
    fp = images_fingerprint(images)
    if "test" in m.probas and fp == data.get("test_fingerprint"):
        return np.load(ens.folder / m.probas["test"]).astype(np.float32)
    if m.model_dir:
        try:
            from ensemble.baselines_models import full_proba, load_model
        except ImportError as exc:
            raise ArtifactError(f"member {m.name}: cannot load baseline models here ({exc})") from exc
        return full_proba(load_model(ens.folder / m.model_dir), images).astype(np.float32)
    raise DataError(
        f"member {m.name} is a baseline with stored probabilities only; it can predict the run's own test set "
        f"(fingerprint {str(data.get('test_fingerprint'))[:16]}, {data.get('n_test')} images) but these "
        f"{len(images)} images have fingerprint {fp[:16]}; rebuild without --include-baselines"
    )


def predict_proba(
    ens: Ensemble,
    images: np.ndarray,
    *,
    tta: bool = True,
    batch_size: int = 128,
    progress: bool = False,
    workers: int | None = None,
) -> np.ndarray:
    """Ensemble probabilities (N, 10): weighted mean over members of their mean over views."""
    images = as_images(images, "test images")
    views = ens.views if tta else [IDENTITY]
    cnns = [m for m in ens.members if m.model is not None]
    total = np.zeros((len(images), N_CLASSES), np.float64)
    if cnns:
        with progress_bar(len(images), f"predict {len(cnns)} models x {len(views)} views", progress) as adv:
            probs = member_probas(
                [m.model for m in cnns],
                images,
                views,
                batch_size=batch_size,
                advance=adv,
                names=[m.name for m in cnns],
                workers=default_workers() if workers is None else workers,
            )
        for m, p in zip(cnns, probs):
            total += m.weight * p.mean(axis=0)
    for m in ens.members:
        if m.model is None:
            total += m.weight * _baseline(ens, m, images)
    return (total / sum(m.weight for m in ens.members)).astype(np.float32)


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save an array as .npy."""
    buf = io.BytesIO()
    np.save(buf, array)
    return atomic_write(path, buf.getvalue())
