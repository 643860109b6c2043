"""Typed reads of a JSON object's fields: a missing or mistyped field is one ArtifactError naming the file and key.

The manifest records (:mod:`ensemble.combine.manifest`) read themselves through :class:`Fields`, so a
hand-edited or truncated ``manifest.json`` fails with ``FILE: 'members[1].weight' must be a number,
got 'x'`` rather than a KeyError deep inside a stage.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TypeAlias, TypeVar

from ensemble.errors import ArtifactError

#: A JSON value as ``json.loads`` gives it. Records keep the parts no stage interprets (a TTA step, the
#: versions) as such values and write them back unchanged.
JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"

T = TypeVar("T", bool, int, float, str, list, dict)
_WHAT = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
_WHAT[dict] = "an object"


class Fields:
    """One JSON object read field by field; ``where`` names the file, ``path`` the object inside it."""

    def __init__(self, obj: object, where: str, path: str = "") -> None:
        if not isinstance(obj, dict):
            what = repr(path) if path else "the top level"
            raise ArtifactError(f"{where}: {what} must be an object, got {_show(obj)}")
        self.obj: dict[str, object] = obj
        self.where = where
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.obj

    def get(self, name: str, kind: type[T]) -> T:
        """The field ``name``, which must be present and of ``kind`` (a float field takes an integer too)."""
        if name not in self.obj:
            raise ArtifactError(f"{self.where}: {self.key(name)!r} is missing")
        return self._typed(name, kind)

    def opt(self, name: str, kind: type[T]) -> T | None:
        """The field ``name`` if it is present and not null, else None."""
        return None if self.obj.get(name) is None else self._typed(name, kind)

    def sub(self, name: str) -> Fields:
        """The object in field ``name`` (required)."""
        return Fields(self.get(name, dict), self.where, self.key(name))

    def opt_sub(self, name: str) -> Fields | None:
        return None if self.obj.get(name) is None else self.sub(name)

    def items(self, name: str) -> list[Fields]:
        """The objects listed in field ``name`` (required)."""
        return [Fields(v, self.where, f"{self.key(name)}[{i}]") for i, v in enumerate(self.get(name, list))]

    def strings(self, name: str) -> tuple[str, ...] | None:
        """A list of strings in field ``name``, or None when it is absent."""
        values = self.opt(name, list)
        if values is not None and not all(isinstance(v, str) for v in values):
            raise ArtifactError(f"{self.where}: {self.key(name)!r} must be a list of strings, got {_show(values)}")
        return None if values is None else tuple(values)

    def json(self, name: str) -> JsonValue:
        """The field as it is (a copy), for the parts no stage interprets; None when absent."""
        return copy.deepcopy(self.obj.get(name))  # type: ignore[return-value]

    def fail(self, name: str, what: str) -> ArtifactError:
        return ArtifactError(f"{self.where}: {self.key(name)!r} must be {what}, got {_show(self.obj.get(name))}")

    def _typed(self, name: str, kind: type[T]) -> T:
        value = self.obj[name]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            raise self.fail(name, _WHAT[kind])
        return value  # type: ignore[return-value]


def compact(pairs: Iterable[tuple[str, object]]) -> JsonObject:
    """A JSON object of ``pairs`` in their order, leaving out those whose value is None."""
    return {k: v for k, v in pairs if v is not None}  # type: ignore[misc]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
