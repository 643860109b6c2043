from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_digits

from ensemble.search.baselines.preprocess import (
    PixelScaler,
    describe,
    deskew,
    fit_preprocessor,
    make_preprocessor,
    split_params,
)


def test_pixel_scaler_flattens_and_scales():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = PixelScaler().fit(x).transform(x)
    assert out.dtype == np.float32
    assert out.shape == (1, 4)
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-6)


def test_pca_is_fitted_on_training_images_only():
    x_train, _ = synthetic_digits(120, seed=1)
    x_other, _ = synthetic_digits(50, seed=2)
    pre = fit_preprocessor(x_train, pca_components=8)
    pca = pre.named_steps["pca"]
    np.testing.assert_allclose(pca.mean_, x_train.reshape(120, -1).mean(0) / 255, atol=1e-5)
    assert pre.transform(x_other).shape == (50, 8)
    assert describe(pre) == "scale/255 + PCA(8)"


def test_no_pca_means_scaling_only():
    x, _ = synthetic_digits(20)
    pre = fit_preprocessor(x, pca_components=0)
    assert list(pre.named_steps) == ["scale"]
    assert pre.transform(x).shape == (20, 784)
    assert describe(pre) == "scale/255"


def test_appended_pca_keeps_the_pixels():
    x, _ = synthetic_digits(60, seed=4)
    pre = fit_preprocessor(x, pca_components=6, pca_append=True)
    z = pre.transform(x)
    assert z.shape == (60, 790)
    np.testing.assert_allclose(z[:, :784], x.reshape(60, -1) / 255, rtol=1e-6)
    assert describe(pre) == "scale/255 + [pixels, PCA(6)]"


def test_whitened_pca_has_unit_variance():
    x, _ = synthetic_digits(200, seed=3)
    z = fit_preprocessor(x, pca_components=5, pca_whiten=True).transform(x)
    np.testing.assert_allclose(z.std(0, ddof=1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("n", [-1, 785])
def test_bad_pca_components(n):
    with pytest.raises(ValueError, match="pca_components must be between 1 and 784"):
        make_preprocessor(pca_components=n)


def test_split_params():
    pre, model = split_params({"pca_components": 40, "pca_whiten": False, "pca_append": True, "C": 3.0})
    assert pre == {"pca_components": 40, "pca_whiten": False, "pca_append": True}
    assert model == {"C": 3.0}


def _slanted_bar(alpha: float) -> np.ndarray:
    """A 1-pixel stroke through (row 6..21) whose column moves by ``alpha`` per row, off-centre."""
    img = np.zeros((28, 28), np.uint8)
    for i in range(6, 22):
        img[i, int(round(11 + alpha * (i - 13.5)))] = 255
    return img


def test_deskew_straightens_a_slanted_stroke_and_centres_it():
    img = _slanted_bar(0.4)
    out = deskew(img[None])[0]
    cols = (out * np.arange(28)).sum(1)[6:22] / out.sum(1)[6:22]
    assert np.ptp(cols) < 1.0  # the stroke is vertical: every row's centre in the same column
    assert abs(cols.mean() - 13.5) < 0.5  # ... and in the middle
    assert out.sum() == pytest.approx(img.astype(np.float32).sum(), rel=0.05)


def test_deskew_matches_scipy_affine_transform():
    from scipy.ndimage import affine_transform

    x, _ = synthetic_digits(6, seed=5)
    r, c = np.mgrid[:28, :28]
    for img, got in zip(x.astype(np.float64), deskew(x), strict=True):
        mass = img.sum()
        mr, mc = (r * img).sum() / mass, (c * img).sum() / mass
        alpha = ((r - mr) * (c - mc) * img).sum() / ((r - mr) ** 2 * img).sum()
        a = np.array([[1.0, 0.0], [alpha, 1.0]])
        want = affine_transform(img, a, offset=np.array([mr, mc]) - a @ [13.5, 13.5], order=1, mode="grid-constant")
        np.testing.assert_allclose(got, want, atol=1e-2)


def test_deskew_keeps_blank_images_blank_and_is_a_pipeline_step():
    x = np.zeros((3, 28, 28), np.uint8)
    assert not deskew(x).any()
    digits, _ = synthetic_digits(10, seed=6)
    pre = fit_preprocessor(digits, deskew=True, pca_components=4)
    assert list(pre.named_steps) == ["deskew", "scale", "pca"]
    assert describe(pre) == "deskew + scale/255 + PCA(4)"
    np.testing.assert_allclose(pre.transform(digits.reshape(10, -1)), pre.transform(digits), rtol=1e-6)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_deskew_value(value):
    with pytest.raises(ValueError, match="deskew must be true or false"):
        make_preprocessor(deskew=value)
