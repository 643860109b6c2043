"""CnnConfig: its defaults, each check's one-line error, its JSON (a trial's config.json) and unknown keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ensemble.errors import SpaceError
from ensemble.io import read_json, write_json
from ensemble.search.cnn.config import DEFAULT, CnnConfig
from ensemble.search.cnn.study import load_cnn_space

# the config a trial wrote before CnnConfig (model.DEFAULTS filled in by validate_config), key for key
OLD_DEFAULTS = {
    "conv_blocks": 3,
    "filters": 24,
    "convs_per_block": 1,
    "kernel_size": 3,
    "batch_norm": True,
    "downsample": "maxpool",
    "conv_dropout": 0.1,
    "head": "flatten",
    "dense_units": 128,
    "dense_dropout": 0.3,
    "optimizer": "adamw",
    "learning_rate": 4e-3,
    "lr_schedule": "onecycle",
    "weight_decay": 1e-4,
    "label_smoothing": 0.05,
    "batch_size": 128,
    "epochs": 8,
    "rotation": 8.0,
    "zoom": 0.08,
    "shift": 0.08,
    "mixed_precision": False,
}
# a trial's config.json as the previous version wrote it: sampled values, planned epochs, mixed precision
OLD_TRIAL_JSON = """\
{
  "conv_blocks": 3,
  "filters": 24,
  "convs_per_block": 1,
  "kernel_size": 3,
  "batch_norm": true,
  "downsample": "maxpool",
  "conv_dropout": 0.1,
  "head": "flatten",
  "dense_units": 256,
  "dense_dropout": 0.3,
  "optimizer": "adamw",
  "learning_rate": 0.0031,
  "lr_schedule": "onecycle",
  "weight_decay": 0.0001,
  "label_smoothing": 0.05,
  "batch_size": 128,
  "epochs": 5,
  "rotation": 10,
  "zoom": 0.08,
  "shift": 0.08,
  "mixed_precision": true,
  "best_epoch": 4
}
"""
KNOWN = ", ".join(OLD_DEFAULTS)
# each check, and the message the previous validate_config gave (where="w")
BAD = [
    ({"downsample": "avg"}, "w: key 'downsample': 'avg' is not one of maxpool, strided"),
    ({"head": 3}, "w: key 'head': 3 is not one of flatten, gap"),
    ({"optimizer": "rmsprop"}, "w: key 'optimizer': 'rmsprop' is not one of adam, adamw, sgd"),
    ({"lr_schedule": "step"}, "w: key 'lr_schedule': 'step' is not one of onecycle, cosine, exponential, constant"),
    ({"conv_blocks": 0}, "w: key 'conv_blocks': must be a positive integer, got 0"),
    ({"filters": 2.5}, "w: key 'filters': must be a positive integer, got 2.5"),
    ({"epochs": True}, "w: key 'epochs': must be a positive integer, got True"),
    ({"batch_size": "128"}, "w: key 'batch_size': must be a positive integer, got '128'"),
    ({"batch_norm": 1}, "w: key 'batch_norm': must be true or false, got 1"),
    ({"mixed_precision": "yes"}, "w: key 'mixed_precision': must be true or false, got 'yes'"),
    ({"rotation": "8"}, "w: key 'rotation': must be a number, got '8'"),
    ({"learning_rate": None}, "w: key 'learning_rate': must be a number, got None"),
    ({"zoom": True}, "w: key 'zoom': must be a number, got True"),
    ({"conv_blocks": 5}, "w: key 'conv_blocks': at most 4 blocks fit a 28x28 image, got 5"),
    ({"conv_dropout": 1.0}, "w: key 'conv_dropout': must be in [0, 1), got 1.0"),
    ({"shift": -0.1}, "w: key 'shift': must be in [0, 1), got -0.1"),
    ({"label_smoothing": 1}, "w: key 'label_smoothing': must be in [0, 1), got 1"),
    ({"rotation": 46}, "w: key 'rotation': degrees must be in [0, 45], got 46"),
    ({"learning_rate": 10}, "w: key 'learning_rate'/'weight_decay' out of range"),
    ({"learning_rate": 0}, "w: key 'learning_rate'/'weight_decay' out of range"),
    ({"weight_decay": -1e-4}, "w: key 'learning_rate'/'weight_decay' out of range"),
    ({"downsample": "avg", "conv_blocks": 0}, "w: key 'downsample': 'avg' is not one of maxpool, strided"),
]


def test_defaults_are_the_previous_defaults_in_their_order() -> None:
    assert DEFAULT == CnnConfig() == CnnConfig.from_json({})
    assert DEFAULT.to_json() == OLD_DEFAULTS and list(DEFAULT.to_json()) == list(OLD_DEFAULTS)
    assert CnnConfig.keys() == tuple(OLD_DEFAULTS)


@pytest.mark.parametrize(("values", "message"), BAD, ids=[m.split(": ")[1] + str(v) for v, m in BAD])
def test_each_check_raises_the_previous_one_line_error(values: dict, message: str) -> None:
    with pytest.raises(SpaceError) as made:
        CnnConfig(**values, where="w")
    assert str(made.value) == message
    with pytest.raises(SpaceError) as read:
        CnnConfig.from_json(values, where="w")
    assert str(read.value) == message


def test_a_change_is_checked_and_a_config_cannot_be_changed_in_place() -> None:
    assert DEFAULT.replace(epochs=3).epochs == 3 and DEFAULT.epochs == 8
    with pytest.raises(SpaceError, match=r"^config: key 'epochs': must be a positive integer, got 0$"):
        DEFAULT.replace(epochs=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.epochs = 3  # type: ignore[misc]


def test_unknown_keys_are_an_error_unless_ignored() -> None:
    data = {"filters": 16, "zeta": 1, "best_epoch": 4}
    with pytest.raises(SpaceError) as exc:
        CnnConfig.from_json(data, where="w")
    assert str(exc.value) == f"w: unknown key(s) ['best_epoch', 'zeta'] (known keys: {KNOWN})"
    assert CnnConfig.from_json(data, extra="ignore") == CnnConfig(filters=16)
    with pytest.raises(SpaceError, match=r"^w: unknown key\(s\) \['where'\]"):
        CnnConfig.from_json({"where": "x"}, where="w")  # the error label is no config key
    with pytest.raises(SpaceError, match=r"^w: expected a mapping of config keys, got list$"):
        CnnConfig.from_json([1, 2], where="w")  # type: ignore[arg-type]


def test_a_trial_config_json_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(OLD_TRIAL_JSON)
    config = CnnConfig.from_json(read_json(old), where=str(old), extra="ignore")
    assert (config.dense_units, config.epochs, config.mixed_precision) == (256, 5, True)
    assert config.rotation == 10 and isinstance(config.rotation, int)  # the value as written, not coerced
    new = write_json(tmp_path / "new.json", {**config.to_json(), "best_epoch": 4})  # as the trainer writes it
    assert new.read_bytes() == old.read_bytes()
    assert CnnConfig.from_json(json.loads(new.read_text()), extra="ignore") == config


def test_a_space_is_checked_at_both_ends_of_each_range(tmp_path: Path) -> None:
    f = tmp_path / "cnn.yaml"
    f.write_text("conv_blocks: {type: int, low: 2, high: 5}\n")
    with pytest.raises(SpaceError, match=r"cnn\.yaml: key 'conv_blocks': at most 4 blocks fit a 28x28 image, got 5"):
        load_cnn_space(f)
    f.write_text("head: {type: categorical, choices: [gap, dense]}\n")
    with pytest.raises(SpaceError, match=r"cnn\.yaml: key 'head': 'dense' is not one of flatten, gap"):
        load_cnn_space(f)
    f.write_text("conv_blocks: {type: int, low: 2, high: 4}\nhead: {type: categorical, choices: [gap, flatten]}\n")
    assert set(load_cnn_space(f).params) == {"conv_blocks", "head"}
