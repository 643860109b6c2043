"""Test-time augmentation: small geometric views of whole image batches, and their selection.

A view is named by a short spec, so a manifest or a command line can list it:

    identity          the image itself
    shift:DX:DY       move by whole pixels (DX > 0 right, DY > 0 down), zero fill, |DX|, |DY| <= 3
    rot:DEG           rotate about the centre, counter-clockwise for DEG > 0, |DEG| <= 20
    zoom:F            scale about the centre (F > 1 enlarges), 0.8 <= F <= 1.25

Views work on raw pixel batches (N, 28, 28) with NumPy: shifts are exact slices, rotations
and zooms are one bilinear gather per batch with sampling positions computed once per view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ensemble.data.sampling import bilinear_taps
from ensemble.errors import UsageError
from ensemble.metrics import row_log_loss

SIDE = 28
IDENTITY = "identity"
#: Candidates ``--tta auto`` chooses from: identity, four 1-pixel shifts, +-8 degrees, 10% zoom in and out.
CANDIDATES: tuple[str, ...] = (
    IDENTITY,
    "shift:1:0",
    "shift:-1:0",
    "shift:0:1",
    "shift:0:-1",
    "rot:8",
    "rot:-8",
    "zoom:1.1",
    "zoom:0.9",
)
MAX_SHIFT = 3
MAX_ROT = 20.0
ZOOM_RANGE = (0.8, 1.25)


@dataclass(frozen=True)
class View:
    """A parsed view: ``kind`` is identity, shift, rot or zoom; ``args`` its numbers."""

    kind: str
    args: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == IDENTITY:
            return IDENTITY
        return ":".join([self.kind, *(_fmt(a) for a in self.args)])


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def parse_view(spec: str) -> View:
    """Parse one view spec, with an error naming the spec and the allowed range."""
    text = spec.strip().lower()
    kind, _, rest = text.partition(":")
    try:
        nums = tuple(float(a) for a in rest.split(":")) if rest else ()
    except ValueError:
        raise UsageError(f"TTA view '{spec}': arguments must be numbers") from None
    if kind in (IDENTITY, "id", "none") and not nums:
        return View(IDENTITY)
    if kind == "shift" and len(nums) == 2:
        if not all(float(a).is_integer() and abs(a) <= MAX_SHIFT for a in nums):
            raise UsageError(f"TTA view '{spec}': shifts must be whole pixels within +-{MAX_SHIFT}")
        return View("shift", tuple(float(int(a)) for a in nums))
    if kind == "rot" and len(nums) == 1:
        if not abs(nums[0]) <= MAX_ROT:
            raise UsageError(f"TTA view '{spec}': rotation must be within +-{MAX_ROT:g} degrees")
        return View("rot", nums)
    if kind == "zoom" and len(nums) == 1:
        if not ZOOM_RANGE[0] <= nums[0] <= ZOOM_RANGE[1]:
            raise UsageError(f"TTA view '{spec}': zoom must be within {ZOOM_RANGE[0]:g}-{ZOOM_RANGE[1]:g}")
        return View("zoom", nums)
    raise UsageError(
        f"TTA view '{spec}': expected identity, shift:DX:DY, rot:DEG or zoom:F (e.g. shift:1:0, rot:-8, zoom:1.1)"
    )


def parse_views(specs: str | Sequence[str]) -> list[str]:
    """Canonical names of a comma-separated list (or sequence) of views, without repeats."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    names: list[str] = []
    for item in items:
        if not item.strip():
            continue
        name = parse_view(item).name
        if name not in names:
            names.append(name)
    if not names:
        raise UsageError("TTA: empty list of views")
    return names


@lru_cache(maxsize=64)
def _sampling(kind: str, arg: float) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel, 4 source indices into a flat image and their bilinear weights."""
    c = (SIDE - 1) / 2.0
    rr, cc = np.meshgrid(np.arange(SIDE, dtype=np.float64), np.arange(SIDE, dtype=np.float64), indexing="ij")
    y, x = rr - c, cc - c
    if kind == "rot":
        # Output = input rotated counter-clockwise (as displayed, row axis pointing down):
        # sample the source at the inverse rotation of each output position.
        t = math.radians(arg)
        sy = math.cos(t) * y - math.sin(t) * x
        sx = math.sin(t) * y + math.cos(t) * x
    else:  # zoom
        sy, sx = y / arg, x / arg
    idx, wts = bilinear_taps(sy + c, sx + c, SIDE, SIDE)
    return idx.reshape(4, -1), wts.reshape(4, -1).astype(np.float32)


def apply_view(view: str | View, images: np.ndarray) -> np.ndarray:
    """One view of a batch of images (N, 28, 28) as float32 (N, 28, 28)."""
    v = parse_view(view) if isinstance(view, str) else view
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise UsageError(f"TTA: expected images of shape (N, {SIDE}, {SIDE}), got {x.shape}")
    if v.kind == IDENTITY:
        return x.copy()
    if v.kind == "shift":
        dx, dy = int(v.args[0]), int(v.args[1])
        out = np.zeros_like(x)
        out[:, max(dy, 0) : SIDE + min(dy, 0), max(dx, 0) : SIDE + min(dx, 0)] = x[
            :, max(-dy, 0) : SIDE + min(-dy, 0), max(-dx, 0) : SIDE + min(-dx, 0)
        ]
        return out
    idx, wts = _sampling(v.kind, float(v.args[0]))
    flat = x.reshape(len(x), SIDE * SIDE)
    out = flat[:, idx[0]] * wts[0]
    for k in range(1, 4):
        out += flat[:, idx[k]] * wts[k]
    return np.clip(out, 0.0, 255.0, out=out).reshape(x.shape)


def stack_views(views: Sequence[str], images: np.ndarray) -> np.ndarray:
    """All views of a batch, view-major, ready for a model: float32 (V * N, 28, 28, 1)."""
    n = len(images)
    out = np.empty((len(views) * n, SIDE, SIDE, 1), np.float32)
    for i, v in enumerate(views):
        out[i * n : (i + 1) * n, :, :, 0] = apply_view(v, images)
    return out


#: A view must beat the current set by more than this many paired standard errors (``--tta auto``).
MIN_GAIN_SE = 1.0


Scores = tuple[np.ndarray, np.ndarray]  # per-row log loss, per-row "argmax is the label"


def _scores(y: np.ndarray, p: np.ndarray) -> Scores:
    """Per-row validation scores of probabilities ``p``: what :func:`_clear_gain` compares."""
    return row_log_loss(y, p), np.argmax(p, axis=1) == y


def _clear_gain(cur: Scores, new: Scores, z: float) -> bool:
    """Is ``new`` better than ``cur`` on validation by more than ``z`` paired standard errors?

    Either the log loss falls by more than z standard errors of the per-row loss differences
    (without losing accuracy), or accuracy rises: rows fixed minus rows broken exceeds
    z * sqrt(fixed + broken) (McNemar's normal approximation), without a higher log loss.
    A gain that small noise could produce (one or two digits out of thousands) is not kept.
    """
    (lc, ok_c), (ln, ok_n) = cur, new
    d = lc - ln
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    fixed, broken = int(np.sum(ok_n & ~ok_c)), int(np.sum(ok_c & ~ok_n))
    loss_gain = d.mean() > max(z * se, 1e-9) and fixed >= broken
    acc_gain = fixed - broken > z * np.sqrt(fixed + broken) and d.mean() >= 0
    return bool(loss_gain or acc_gain)


def select_views(
    view_probas: Mapping[str, np.ndarray],
    y: np.ndarray,
    *,
    start: Sequence[str] = (IDENTITY,),
    min_gain_se: float = MIN_GAIN_SE,
) -> tuple[list[str], list[dict[str, object]]]:
    """Greedy forward selection of views on validation probabilities.

    ``view_probas[v]`` is the (ensemble) probability under view ``v``; a set of views predicts the
    mean of its members. Starting from ``start``, the candidate giving the lowest log loss among
    those that clearly improve validation log loss or accuracy (by more than ``min_gain_se``
    paired standard errors, see :func:`_clear_gain`; 0 keeps any improvement) is added, until
    none does. Returns the kept views and one record per step (view, val_logloss, val_accuracy).
    """
    y = np.asarray(y, dtype=np.int64)
    names = list(view_probas)
    chosen = [v for v in start if v in view_probas] or names[:1]
    total = sum(np.asarray(view_probas[v], np.float64) for v in chosen)
    cur = _scores(y, total / len(chosen))
    steps: list[dict[str, object]] = [
        {"views": list(chosen), "val_logloss": float(cur[0].mean()), "val_accuracy": float(cur[1].mean())}
    ]
    while True:
        best: tuple[float, float, str, Scores] | None = None
        for v in names:
            if v in chosen:
                continue
            new = _scores(y, (total + view_probas[v]) / (len(chosen) + 1))
            loss, acc = float(new[0].mean()), float(new[1].mean())
            if _clear_gain(cur, new, min_gain_se) and (best is None or (loss, -acc) < (best[0], -best[1])):
                best = (loss, acc, v, new)
        if best is None:
            return chosen, steps
        loss, acc, v, cur = best
        chosen.append(v)
        total = total + view_probas[v]
        steps.append({"add": v, "val_logloss": loss, "val_accuracy": acc})
