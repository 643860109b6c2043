"""The machine's accelerators, and which of them a search uses (``--devices all|0,1,...|cpu``).

Discovery, in order: ``CUDA_VISIBLE_DEVICES`` when it is set (its entries, up to the first invalid
one, as CUDA reads it; empty: no GPU), else the ``GPU N:`` lines of ``nvidia-smi -L``, else the GPUs
the Keras backend lists itself. A process is pinned to one device by setting
``CUDA_VISIBLE_DEVICES`` to that device's id before it imports the backend
(:mod:`ensemble.search.cnn.pool` does so in each trainer). Without a GPU there is one device, ``cpu``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ensemble.errors import UsageError

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
CPU = "cpu"


@dataclass(frozen=True)
class Device:
    """One device: its label in trial attrs and logs (``gpu:K``, ``cpu``), and how a process is pinned to it."""

    label: str
    visible: str | None  # the CUDA_VISIBLE_DEVICES value that pins a process to it; None: leave it as it is


@dataclass(frozen=True)
class Found:
    """The GPUs discovery found (their ids as CUDA_VISIBLE_DEVICES names them) and where it found them."""

    ids: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Devices:
    """The devices a search uses, one trainer slot (or several: trials per device) on each."""

    devices: tuple[Device, ...]
    source: str  # where they were found, for the log

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(d.label for d in self.devices)

    def describe(self) -> str:
        return f"{', '.join(self.labels)} ({self.source})"


def visible_ids(value: str) -> tuple[str, ...]:
    """The GPU ids of a ``CUDA_VISIBLE_DEVICES`` value: CUDA stops at the first invalid entry (``-1``, empty)."""
    ids: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return tuple(ids)


def smi_ids() -> tuple[str, ...] | None:
    """The indices ``nvidia-smi -L`` lists (``GPU 0: ...``); None without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    ids = [line.split(":", 1)[0].split()[1] for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return tuple(i for i in ids if i.isdigit())


def backend_gpu_count() -> int:
    """GPUs the Keras backend (``$KERAS_BACKEND``, default TensorFlow) sees itself; 0 when it has no GPU support."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        if backend == "jax":
            import jax

            return sum(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return int(torch.cuda.device_count())
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    except Exception:  # a backend without GPU support, or none installed
        return 0


def discover() -> Found:
    """The machine's GPUs: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``, else the backend's list."""
    if VISIBLE_ENV in os.environ:
        return Found(visible_ids(os.environ[VISIBLE_ENV]), VISIBLE_ENV)
    ids = smi_ids()
    if ids is not None:
        return Found(ids, "nvidia-smi -L")
    n = backend_gpu_count()
    return Found(tuple(str(i) for i in range(n)), f"the {os.environ.get('KERAS_BACKEND', 'tensorflow')} backend")


def check_choice(value: str) -> str:
    """``all``, ``cpu`` or a comma list of GPU ids (``0,1`` or ``gpu:0,gpu:1``), checked before anything runs."""
    text = str(value).strip().lower()
    if text in ("all", CPU):
        return text
    ids = [p.strip().removeprefix("gpu:") for p in text.split(",")]
    if not ids or any(not i for i in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"--devices takes all, cpu or a comma list of GPU ids such as 0,1; got {value!r}")
    return ",".join(ids)


def select(choice: str, found: Found | None = None) -> Devices:
    """The devices of ``choice`` (see :func:`check_choice`) among those found (discovered when not given)."""
    choice = check_choice(choice)
    if choice == CPU:
        return Devices((Device(CPU, ""),), "--devices cpu: every GPU hidden from the trainers")
    found = discover() if found is None else found
    if choice == "all":
        if not found.ids:
            return Devices((Device(CPU, None),), f"no GPU found through {found.source}")
        return Devices(tuple(Device(f"gpu:{i}", i) for i in found.ids), found.source)
    wanted = choice.split(",")
    missing = [i for i in wanted if i not in found.ids]
    if missing:
        have = ", ".join(found.ids) or "none"
        raise UsageError(f"--devices: no GPU {', '.join(missing)} here ({found.source} lists: {have})")
    return Devices(tuple(Device(f"gpu:{i}", i) for i in wanted), f"--devices {choice} of {found.source}")


def free_gpu(choice: str, found: Found | None = None) -> str | None:
    """A GPU that ``choice``'s trainers leave free (the first), for XGBoost in the baselines; None when every GPU
    has trainers (XGBoost then shares one) or there is none."""
    found = discover() if found is None else found
    used = set(select(choice, found).labels)
    return next((i for i in found.ids if f"gpu:{i}" not in used), None)


def merged_devices(labels: Iterable[str]) -> str | None:
    """Several devices in one report cell: ``jax/gpu:0``, ``jax/gpu:2``, ``cpu`` -> ``cpu + jax/gpu:0,2``."""
    groups: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        head, sep, index = label.rpartition(":")
        if sep and head.endswith("gpu"):
            groups.setdefault(head, []).append(index)
        else:
            groups.setdefault(label, [])
    for indices in groups.values():
        indices.sort(key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
    return " + ".join(f"{h}:{','.join(ix)}" if ix else h for h, ix in sorted(groups.items())) or None
