from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ensemble.search.cnn.augment import RandomAffine, warp  # noqa: E402


def _bar() -> np.ndarray:
    x = np.zeros((2, 28, 28, 1), np.float32)
    x[:, 8:20, 12:15] = 1.0
    return x


def _warp(x: np.ndarray, row: list[float]) -> np.ndarray:
    return keras.ops.convert_to_numpy(warp(x, np.array([row] * len(x), np.float32)))


def test_identity_matrix_returns_the_image() -> None:
    x = _bar()
    np.testing.assert_allclose(_warp(x, [1, 0, 0, 0, 1, 0]), x, atol=1e-6)


def test_shift_moves_content_by_whole_pixels() -> None:
    x = _bar()
    out = _warp(x, [1, 0, -1 / 28, 0, 1, 2 / 28])  # 1 px right, 2 px up
    np.testing.assert_allclose(out[:, :-2, 1:], x[:, 2:, :-1], atol=1e-6)


def test_quarter_turn_matches_rot90() -> None:
    x = _bar()
    out = _warp(x, [0, -1, 0, 1, 0, 0])[0, :, :, 0]
    assert np.allclose(out, np.rot90(x[0, :, :, 0], 1), atol=1e-6)


def test_outside_is_zero_and_values_stay_in_range() -> None:
    x = np.ones((1, 28, 28, 1), np.float32)
    out = _warp(x, [1, 0, 0.5, 0, 1, 0])  # samples 14 px to the right: half the image moves out
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert out[0, :, 14:].sum() == 0 and out[0, :, :14].min() > 0.99


def test_layer_is_identity_at_inference_and_random_in_training() -> None:
    layer = RandomAffine(10, 0.1, 0.1, seed=0)
    x = _bar()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    trained = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.allclose(trained, x)
    assert not np.allclose(trained[0], trained[1])  # each image gets its own warp


def test_saved_model_with_the_layer_reloads(tmp_path) -> None:
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(RandomAffine(8, 0.08, 0.08)(inputs)))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    x = _bar()
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert again.layers[1].get_config()["rotation"] == 8.0
