"""What ``ensemble worker`` needs to join a run's CNN study, recorded in the study (its user attr ``SPEC_ATTR``).

The spec holds everything that changes a trial's result: the search space (its YAML text), the epochs
every trial trains, the seed (which rows ``max_train`` keeps, each trial's training seed), ``max_train``,
mixed precision and the pruner; with the target, and the ensemble version and spec format that wrote it.
The run's data and split are checked apart (:func:`ensemble.search.storage.check_run_identity`).

Whoever can write to the storage can write this record, so a worker trusts none of it: :func:`read`
checks every field's type and range and parses the space's text exactly like a local space file.
Nothing read from the storage becomes a path, and no file is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ensemble.errors import UsageError
from ensemble.search.cnn.config import CnnConfig, check_space_values
from ensemble.search.spaces import Space, load_space_text

if TYPE_CHECKING:
    import optuna


SPEC_ATTR = "search_spec"
SPEC_FORMAT = 2  # changed with the fields: a worker refuses a spec of another format
PRUNERS = ("median", "hyperband", "none")
COUNTS = ("finished", "complete")  # what the target counts: trials that ran to an end, or complete ones
FIELDS = ("format", "version", "space", "target", "count", "epochs", "pruner", "seed", "max_train", "mixed_precision")
MAX_TARGET = 100_000
MAX_EPOCHS = 10_000
MAX_ROWS = 10_000_000
MAX_SEED = 2**32 - 1
MAX_SPACE_CHARS = 100_000


@dataclass(frozen=True)
class Spec:
    """A checked spec: what a worker trains with."""

    space: Space
    target: int
    count: str
    epochs: int | None
    pruner: str
    seed: int
    max_train: int | None
    mixed_precision: bool


def publish(
    study: optuna.Study,
    space: Space,
    *,
    target: int,
    count: str,
    epochs: int | None,
    pruner: str,
    seed: int,
    max_train: int | None,
    mixed_precision: bool,
) -> None:
    """Record (or update) what a worker needs to join this study."""
    import yaml

    from ensemble import __version__

    spec = {
        "format": SPEC_FORMAT,
        "version": __version__,
        "space": yaml.safe_dump(dict(space.params), sort_keys=False),  # what this process samples from
        "target": int(target),
        "count": count,
        "epochs": epochs,
        "pruner": pruner,
        "seed": int(seed),
        "max_train": max_train,
        "mixed_precision": bool(mixed_precision),
    }
    if study.user_attrs.get(SPEC_ATTR) != spec:
        study.set_user_attr(SPEC_ATTR, spec)


def update(study: optuna.Study, **changes: object) -> None:
    """Change some fields of the published spec (the plan's revisions: target and epochs)."""
    spec = study.user_attrs.get(SPEC_ATTR)
    if spec is not None and any(spec.get(k) != v for k, v in changes.items()):
        study.set_user_attr(SPEC_ATTR, {**spec, **changes})


def read(raw: object, *, run: str) -> Spec:
    """The spec recorded in run ``run``'s study, checked field by field (one-line UsageError naming the field)."""
    from ensemble import __version__

    if raw is None:
        raise UsageError(f"run '{run}': its CNN study records no search spec for workers (made by an older version)")
    where = f"run '{run}': the search spec in the storage"
    if not isinstance(raw, dict):
        raise UsageError(f"{where} is not a mapping but {type(raw).__name__}")
    if raw.get("format") != SPEC_FORMAT:
        raise UsageError(
            f"{where}: field 'format' is {_show(raw.get('format'))}, this worker reads {SPEC_FORMAT}: "
            "run the same ensemble version as the run's first machine"
        )
    if raw.get("version") != __version__:
        raise UsageError(
            f"{where}: field 'version': written by ensemble {_show(raw.get('version'))}, this worker "
            f"is ensemble {__version__}: run the same version on every machine"
        )
    extra, missing = sorted(set(raw) - set(FIELDS), key=str), [f for f in FIELDS if f not in raw]
    if extra or missing:
        name = extra[0] if extra else missing[0]
        raise UsageError(f"{where}: {'unknown' if extra else 'missing'} field {_show(name)}")
    mixed = raw["mixed_precision"]
    if not isinstance(mixed, bool):
        raise UsageError(f"{where}: field 'mixed_precision' must be true or false, got {_show(mixed)}")
    return Spec(
        space=_space(raw["space"], where),
        target=_int(raw, "target", 1, MAX_TARGET, where),
        count=_choice(raw, "count", COUNTS, where),
        epochs=_optional_int(raw, "epochs", 1, MAX_EPOCHS, where),
        pruner=_choice(raw, "pruner", PRUNERS, where),
        seed=_int(raw, "seed", 0, MAX_SEED, where),
        max_train=_optional_int(raw, "max_train", 1, MAX_ROWS, where),
        mixed_precision=mixed,
    )


def _space(text: object, where: str) -> Space:
    """Parse and check the space's YAML text as ``load_cnn_space`` checks a file (no file is written)."""
    if not isinstance(text, str) or len(text) > MAX_SPACE_CHARS:
        raise UsageError(f"{where}: field 'space' must be YAML text of at most {MAX_SPACE_CHARS:,} characters")
    label = f"{where}, field 'space'"
    space = load_space_text(text, where=label, known=CnnConfig.keys())
    check_space_values(space, where=label)
    return space


def _int(raw: Mapping[str, object], field: str, low: int, high: int, where: str) -> int:
    value = raw[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{where}: field '{field}' must be an integer from {low} to {high:,}, got {_show(value)}")
    return value


def _optional_int(raw: Mapping[str, object], field: str, low: int, high: int, where: str) -> int | None:
    return None if raw[field] is None else _int(raw, field, low, high, where)


def _choice(raw: Mapping[str, object], field: str, allowed: tuple[str, ...], where: str) -> str:
    if raw[field] not in allowed:
        raise UsageError(f"{where}: field '{field}' must be one of {', '.join(allowed)}, got {_show(raw[field])}")
    return str(raw[field])


def _show(value: object) -> str:
    """A value read from the storage, fit for a one-line message (escaped, short)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
