"""Images given as arrays: the shapes and pixel values accepted, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble.data.arrays import as_images, images_784
from ensemble.errors import DataError


def test_every_accepted_shape_gives_the_same_uint8_images() -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    for shaped in (x, x[..., None], x.reshape(3, 784), x.astype(np.float32)):
        np.testing.assert_array_equal(as_images(shaped), x)
    np.testing.assert_array_equal(images_784(x[..., None], "x"), x.reshape(3, 784))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((3, 27, 27)), r"expected shape \(N, 28, 28\) or \(N, 784\).*got \(3, 27, 27\)"),
        (np.zeros((0, 784)), "N > 0"),
        (np.full((2, 784), 300.0), "raw 0-255"),
        (np.full((2, 784), np.nan), "raw 0-255"),
        (np.full((2, 784), 0.5), "scaled to 0-1"),
    ],
)
def test_bad_images_are_one_line_errors(x: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        as_images(x, "test images")


def test_fractional_pixels_are_truncated_or_refused_when_whole_is_asked() -> None:
    x = np.full((1, 784), 12.7)
    assert as_images(x).max() == 12
    with pytest.raises(DataError, match="whole numbers"):
        images_784(x, "x_train")
