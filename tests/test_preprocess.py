from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_digits

from ensemble.preprocess import PixelScaler, describe, fit_preprocessor, make_preprocessor, split_params


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
