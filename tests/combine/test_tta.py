from __future__ import annotations

import numpy as np
import pytest

from ensemble.combine.tta import CANDIDATES, IDENTITY, apply_view, parse_views, select_views, stack_views
from ensemble.errors import UsageError


def _img() -> np.ndarray:
    x = np.zeros((2, 28, 28), np.uint8)
    x[0, 10:18, 12:16] = 255
    x[1, 5, 7] = 100
    return x


def test_identity_and_shifts_are_exact() -> None:
    x = _img()
    np.testing.assert_array_equal(apply_view(IDENTITY, x), x.astype(np.float32))
    right = apply_view("shift:1:0", x)
    np.testing.assert_array_equal(right[:, :, 1:], x[:, :, :-1])
    assert not right[:, :, 0].any()
    down = apply_view("shift:0:-1", x)  # up by one
    np.testing.assert_array_equal(down[:, :-1, :], x[:, 1:, :])
    assert apply_view("shift:2:3", x)[1, 8, 9] == 100


def test_rotation_and_zoom_keep_mass_and_centre() -> None:
    x = _img()[:1]
    for v in ("rot:8", "rot:-10", "zoom:1.1", "zoom:0.9"):
        y = apply_view(v, x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert 0 <= y.min() and y.max() <= 255
        cy, cx = np.argwhere(y[0] > 0).mean(axis=0)
        assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5
    assert apply_view("zoom:1.1", x).sum() > x.sum() > apply_view("zoom:0.9", x).sum()
    np.testing.assert_allclose(apply_view("rot:0", x), x, atol=1e-3)
    # +8 then -8 degrees is close to the original (interpolation blurs a little)
    back = apply_view("rot:-8", apply_view("rot:8", x))
    assert np.abs(back - x).mean() < 10


def test_parse_views_canonical_and_errors() -> None:
    assert parse_views("identity, shift:1:0,rot:-8.0,zoom:1.10,shift:1:0") == [
        IDENTITY,
        "shift:1:0",
        "rot:-8",
        "zoom:1.1",
    ]
    assert parse_views(CANDIDATES) == list(CANDIDATES)
    for bad, msg in (("rot:45", "within"), ("shift:1", "expected identity"), ("zoom:x", "numbers"), ("blur", "e.g.")):
        with pytest.raises(UsageError, match=msg):
            parse_views(bad)


def test_stack_views_is_view_major() -> None:
    x = _img()
    s = stack_views([IDENTITY, "shift:1:0"], x)
    assert s.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(s[:2, ..., 0], x)
    np.testing.assert_array_equal(s[2:, ..., 0], apply_view("shift:1:0", x))


def _rows(y: np.ndarray, p_true: float) -> np.ndarray:
    p = np.full((len(y), 10), (1 - p_true) / 9)
    p[np.arange(len(y)), y] = p_true
    return p


def test_select_views_keeps_only_helpful_views() -> None:
    y = np.array([0, 1, 2, 3])
    probas = {
        IDENTITY: _rows(y, 0.6),
        "shift:1:0": _rows(y, 0.9),  # better: kept
        "rot:8": _rows(y, 0.05),  # wrong everywhere: refused
    }
    views, steps = select_views(probas, y)
    assert views == [IDENTITY, "shift:1:0"]
    assert steps[0]["views"] == [IDENTITY] and steps[1]["add"] == "shift:1:0"
    assert steps[1]["val_logloss"] < steps[0]["val_logloss"]
    only, _ = select_views({IDENTITY: _rows(y, 0.9), "rot:8": _rows(y, 0.5)}, y)
    assert only == [IDENTITY]


def test_select_views_refuses_a_gain_smaller_than_its_noise() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    base = _rows(y, 0.9)
    noisy = base.copy()  # a view that moves every row's confidence at random: gain ~0.5 standard errors
    noisy[np.arange(len(y)), y] = np.clip(0.9002 + rng.normal(0, 0.02, len(y)), 0.5, 0.999)
    wrong = np.argmax(base, 1) != y
    assert not wrong.any()
    views, steps = select_views({IDENTITY: base, "rot:8": noisy}, y)
    assert views == [IDENTITY] and len(steps) == 1
    kept, _ = select_views({IDENTITY: base, "rot:8": noisy}, y, min_gain_se=0.0)  # any gain counts
    assert kept == [IDENTITY, "rot:8"]
    clear = _rows(y, 0.93)  # +0.03 on every row: far above its noise
    assert select_views({IDENTITY: base, "shift:1:0": clear}, y)[0] == [IDENTITY, "shift:1:0"]
