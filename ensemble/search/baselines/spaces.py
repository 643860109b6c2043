"""The baseline families' search spaces: where each lives, its validation, and its first trial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ensemble.errors import SpaceError, UsageError
from ensemble.search.baselines.models import FAMILIES, Family, space_keys
from ensemble.search.spaces import Space, load_space
from ensemble.search.spaces import spaces_dir as shipped_spaces_dir


def space_path(family: str, spaces_dir: str | Path | None = None) -> Path:
    """``<family>.yaml`` in ``spaces_dir`` (``--spaces``), by default among the shipped spaces."""
    return (Path(spaces_dir) if spaces_dir else shipped_spaces_dir()) / f"{family}.yaml"


def load_family_space(family: Family, path: Path) -> Space:
    """Load and validate a family's search space, including a dry build of its fixed values and choices."""
    from ensemble.search.baselines.models import check_params
    from ensemble.search.baselines.preprocess import make_preprocessor, split_params

    space = load_space(path, known=space_keys(family))
    base = space.defaults()
    trials = [("", base)] + [
        (key, {**base, key: choice})
        for key, spec in space.params.items()
        if isinstance(spec, dict) and spec["type"] == "categorical"
        for choice in spec["choices"]
    ]
    for key, params in trials:
        pre, model = split_params(params)
        model.pop("search_rows", None)
        try:
            make_preprocessor(**pre)
            check_params(family, model)
        except Exception as exc:  # sklearn raises several kinds
            where = f"key '{key}': value {params[key]!r}" if key else "fixed values"
            raise SpaceError(f"{path}: {where} rejected by {family.name}: {exc}") from exc
    rows = base.get("search_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise SpaceError(f"{path}: key 'search_rows': must be a whole number >= 0 (0: all rows), got {rows!r}")
    return space


def parse_models(text: str | None) -> list[str]:
    """Validate a comma list of family names (None or 'all': every family)."""
    if text is None or text.strip() == "all":
        return list(FAMILIES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise UsageError(f"unknown model(s) {', '.join(bad) or repr(text)}; valid: {', '.join(FAMILIES)}")
    return list(dict.fromkeys(names))


def runnable(names: list[str], say: Callable[[str], object] = print) -> list[str]:
    """``names`` less the families whose optional package is missing, each skipped with one line through ``say``.

    UsageError (one line) when none is left: the families asked for cannot run here.
    """
    kept = []
    for name in names:
        why = FAMILIES[name].missing
        if why:
            say(f"{name}: skipped ({why})")
        else:
            kept.append(name)
    if names and not kept:
        raise UsageError(f"no baseline family can run: {', '.join(f'{n} {FAMILIES[n].missing}' for n in names)}")
    return kept


def first_params(space: Space) -> dict[str, Any]:
    """The space's defaults (range midpoints, first choices) for its ranged keys, snapped to int steps."""
    out = {}
    for key, value in space.defaults().items():
        spec = space.params[key]
        if not isinstance(spec, dict):
            continue
        if spec["type"] == "int" and not spec.get("log"):
            step = spec.get("step", 1)
            value = min(spec["high"], spec["low"] + step * round((value - spec["low"]) / step))
        out[key] = value
    return out
