"""A CNN's configuration: :class:`CnnConfig`, its keys, defaults and checks, read from and written as JSON.

A config is checked when it is made: a wrong value raises a one-line :class:`~ensemble.errors.SpaceError`
naming the key. A trial's ``config.json`` is :meth:`CnnConfig.to_json` (with its ``best_epoch``), and
:meth:`CnnConfig.from_json` reads it back, or any mapping of config keys (a search space's values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING, Literal, get_args

from ensemble.errors import SpaceError

if TYPE_CHECKING:
    from ensemble.search.spaces import Space

Downsample = Literal["maxpool", "strided"]
Head = Literal["flatten", "gap"]  # gap: global average pooling
Optimizer = Literal["adam", "adamw", "sgd"]  # sgd: Nesterov momentum 0.9
LrSchedule = Literal["onecycle", "cosine", "exponential", "constant"]
Extra = Literal["error", "ignore"]  # what from_json does with a key that is not a config key
ConfigValue = int | float | str | bool  # a value of a config's JSON form

CHOICES: dict[str, tuple[str, ...]] = {
    "downsample": get_args(Downsample),
    "head": get_args(Head),
    "optimizer": get_args(Optimizer),
    "lr_schedule": get_args(LrSchedule),
}
POSITIVE_INTS = ("conv_blocks", "filters", "convs_per_block", "kernel_size", "dense_units", "batch_size", "epochs")
BOOLS = ("batch_norm", "mixed_precision")
NUMBERS = (
    "conv_dropout",
    "dense_dropout",
    "zoom",
    "shift",
    "label_smoothing",
    "rotation",
    "learning_rate",
    "weight_decay",
)
FRACTIONS = ("conv_dropout", "dense_dropout", "zoom", "shift", "label_smoothing")  # in [0, 1)
MAX_BLOCKS = 4  # each block halves the image: four fit 28x28
MAX_ROTATION = 45  # degrees


@dataclass(frozen=True, kw_only=True)
class CnnConfig:
    """Everything that describes one CNN and its training; search_spaces/cnn.yaml sets or samples any field.

    The fields keep the values given (an integer ``rotation`` stays one), so a config written back as JSON
    reads as it was read. ``where`` names the source in error messages (a file, a space).
    """

    # architecture
    conv_blocks: int = 3
    filters: int = 24  # first block; doubled each block
    convs_per_block: int = 1
    kernel_size: int = 3
    batch_norm: bool = True
    downsample: Downsample = "maxpool"
    conv_dropout: float = 0.1
    head: Head = "flatten"
    dense_units: int = 128
    dense_dropout: float = 0.3
    # training
    optimizer: Optimizer = "adamw"
    learning_rate: float = 4e-3
    lr_schedule: LrSchedule = "onecycle"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    batch_size: int = 128
    epochs: int = 8
    # augmentation (training only)
    rotation: float = 8.0  # degrees
    zoom: float = 0.08  # fraction
    shift: float = 0.08  # fraction of the image size
    mixed_precision: bool = False
    where: InitVar[str] = "config"

    def __post_init__(self, where: str) -> None:
        _check_types(self, where)
        _check_ranges(self, where)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every config key, in the order a config's JSON lists them."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_json(cls, data: Mapping[str, object], *, where: str = "config", extra: Extra = "error") -> CnnConfig:
        """The config ``data`` describes, defaults for the keys it lacks.

        ``extra="error"``: a key that is not a config key is a SpaceError; ``"ignore"``: skipped (a trial's
        ``config.json`` also holds its ``best_epoch``).
        """
        if not isinstance(data, Mapping):
            raise SpaceError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
        keys = cls.keys()
        unknown = set(data) - set(keys)
        if unknown and extra == "error":
            raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)} (known keys: {', '.join(keys)})")
        values = {k: v for k, v in data.items() if k not in unknown}
        return cls(**values, where=where)  # type: ignore[arg-type]  # each value is checked in __post_init__

    def to_json(self) -> dict[str, ConfigValue]:
        """Every key and its value, in :meth:`keys` order: what a trial's ``config.json`` holds."""
        return {key: getattr(self, key) for key in self.keys()}

    def replace(self, **changes: ConfigValue) -> CnnConfig:
        """A copy with ``changes`` (checked like any config)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_types(c: CnnConfig, where: str) -> None:
    for key, allowed in CHOICES.items():
        value = getattr(c, key)
        if value not in allowed:
            raise SpaceError(f"{where}: key '{key}': {value!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE_INTS:
        value = getattr(c, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpaceError(f"{where}: key '{key}': must be a positive integer, got {value!r}")
    for key in BOOLS:
        if not isinstance(getattr(c, key), bool):
            raise SpaceError(f"{where}: key '{key}': must be true or false, got {getattr(c, key)!r}")
    for key in NUMBERS:
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpaceError(f"{where}: key '{key}': must be a number, got {value!r}")


def _check_ranges(c: CnnConfig, where: str) -> None:
    if c.conv_blocks > MAX_BLOCKS:
        raise SpaceError(
            f"{where}: key 'conv_blocks': at most {MAX_BLOCKS} blocks fit a 28x28 image, got {c.conv_blocks}"
        )
    for key in FRACTIONS:
        if not 0 <= float(getattr(c, key)) < 1:
            raise SpaceError(f"{where}: key '{key}': must be in [0, 1), got {getattr(c, key)!r}")
    if not 0 <= float(c.rotation) <= MAX_ROTATION:
        raise SpaceError(f"{where}: key 'rotation': degrees must be in [0, {MAX_ROTATION}], got {c.rotation!r}")
    if not 0 < float(c.learning_rate) < 10 or float(c.weight_decay) < 0:
        raise SpaceError(f"{where}: key 'learning_rate'/'weight_decay' out of range")


DEFAULT = CnnConfig()  # every key at its default


def check_space_values(space: Space, *, where: str) -> None:
    """Check every config a CNN search space can give: its defaults, each fixed value, each choice, both ends
    of each range (one-line SpaceError naming ``where`` and the key)."""
    CnnConfig.from_json(space.defaults(), where=where)
    CnnConfig.from_json({k: v for k, v in space.params.items() if not isinstance(v, dict)}, where=where)
    for key, spec in space.params.items():
        if isinstance(spec, dict):
            for value in spec["choices"] if spec["type"] == "categorical" else (spec["low"], spec["high"]):
                CnnConfig.from_json({key: value}, where=where)
