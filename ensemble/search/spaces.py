"""Editable YAML search spaces: each key is a fixed value or a range Optuna samples.

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    batch_size: {type: categorical, choices: [64, 128, 256]}
    conv_blocks: {type: int, low: 2, high: 3}
    batch_norm: true            # fixed value

Errors name the file and the key. The shipped spaces live in the package (``ensemble.search_spaces``,
the repository's top-level ``search_spaces/`` folder): :func:`spaces_dir` finds them, :func:`space_file`
turns a ``--space`` value or a preset's ``space`` setting into a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensemble.errors import SpaceError, one_line

if TYPE_CHECKING:
    import optuna

SPACES_PACKAGE = "ensemble.search_spaces"  # the top-level search_spaces/ folder, mapped in pyproject.toml


def spaces_dir() -> Path:
    """The folder of the shipped search spaces, wherever the package is installed (not the current folder).

    ``pip install .`` copies them into ``ensemble/search_spaces/``; an editable install maps that package
    to the repository's ``search_spaces/``, and a source checkout that is not installed finds it next to
    the ``ensemble`` folder.
    """
    from importlib.resources import files

    try:
        root = files(SPACES_PACKAGE)
    except ModuleNotFoundError:  # running from a source tree that was never installed
        root = Path(__file__).resolve().parents[2] / "search_spaces"
    if not isinstance(root, Path) or not root.is_dir():
        raise SpaceError(f"shipped search spaces not found as a folder ({root}); reinstall with 'pip install .'")
    return root


def shipped_spaces() -> list[str]:
    """The file names of the shipped search spaces (``cnn.yaml``, ``logreg.yaml``, ...)."""
    return sorted(f.name for f in spaces_dir().glob("*.yaml"))


def space_file(spec: str | Path) -> Path:
    """The search-space file ``spec`` names: a user path, or the name of a shipped space.

    A value with a folder part (``./cnn.yaml``, ``/x/my.yaml``) is a path, used as given. A bare file
    name is a shipped space when one has that name (``cnn_quick.yaml``), else a file in the current
    folder (``my.yaml``). A bare name that is both is refused rather than guessed.
    """
    path = Path(spec)
    if str(spec) != path.name:  # "./x.yaml", "dir/x.yaml", an absolute path
        return path
    shipped = spaces_dir() / path.name
    if not shipped.is_file():
        if path.is_file():
            return path
        raise SpaceError(
            f"{spec}: search-space file not found (not a file here, and not a shipped space: "
            f"{', '.join(shipped_spaces())})"
        )
    if path.is_file():
        raise SpaceError(
            f"{spec}: ambiguous: both a file in the current folder and a shipped search space; "
            f"write ./{path.name} for yours or {shipped} for the shipped one"
        )
    return shipped


_RANGE_KEYS = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"}}
_RANGE_KEYS["categorical"] = {"type", "choices"}


@dataclass(frozen=True)
class Space:
    """A parsed search space: ``params`` maps each key to a fixed value or a range spec."""

    path: Path
    params: dict[str, Any]

    def suggest(self, trial: optuna.Trial, prefix: str = "") -> dict[str, Any]:
        """Sample every ranged key on ``trial``; fixed keys pass through unchanged."""
        out: dict[str, Any] = {}
        for key, spec in self.params.items():
            if not isinstance(spec, dict):
                out[key] = spec
                continue
            name = prefix + key
            kind = spec["type"]
            if kind == "categorical":
                out[key] = trial.suggest_categorical(name, spec["choices"])
            elif kind == "int":
                out[key] = trial.suggest_int(
                    name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
                )
            else:
                out[key] = trial.suggest_float(
                    name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
                )
        return out

    def distributions(self, prefix: str = "") -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distribution of every ranged key (named as :meth:`suggest` names it)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for key, spec in self.params.items():
            if not isinstance(spec, dict):
                continue
            log = spec.get("log", False)
            if spec["type"] == "categorical":
                out[prefix + key] = CategoricalDistribution(spec["choices"])
            elif spec["type"] == "int":
                out[prefix + key] = IntDistribution(spec["low"], spec["high"], step=spec.get("step", 1), log=log)
            else:
                out[prefix + key] = FloatDistribution(spec["low"], spec["high"], step=spec.get("step"), log=log)
        return out

    def check_fits(self, study: optuna.Study, *, run: str, prefix: str = "") -> None:
        """SpaceError (one line) when a key's distribution cannot join the study's trials' (other choices, another
        kind or log scale): Optuna would fail every trial. New ranges of int and float keys are fine."""
        from optuna.distributions import check_distribution_compatibility

        mine = self.distributions(prefix)
        for trial in study.get_trials(deepcopy=False):
            for name, old in trial.distributions.items():
                if name not in mine:
                    continue
                try:
                    check_distribution_compatibility(old, mine[name])
                except ValueError:
                    raise SpaceError(
                        f"{self.path}: key '{name}' is {_describe(mine[name])} but study '{study.study_name}' of "
                        f"run '{run}' has trials with {_describe(old)}: use the same, or start over "
                        "(ensemble run --restart) or under a new run name"
                    ) from None

    def defaults(self) -> dict[str, Any]:
        """A deterministic config: fixed values, range midpoints (geometric when log), first choices."""
        out: dict[str, Any] = {}
        for key, spec in self.params.items():
            if not isinstance(spec, dict):
                out[key] = spec
            elif spec["type"] == "categorical":
                out[key] = spec["choices"][0]
            else:
                lo, hi = spec["low"], spec["high"]
                mid = (lo * hi) ** 0.5 if spec.get("log") else (lo + hi) / 2
                out[key] = int(round(mid)) if spec["type"] == "int" else float(mid)
        return out


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    """A distribution as a space file writes it: ``choices [4, 8]``, ``int 1..5 (log)``."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    kind = type(dist).__name__.removesuffix("Distribution").lower()
    return f"{kind} {dist.low:g}..{dist.high:g}{' (log)' if dist.log else ''}"  # type: ignore[attr-defined]


def _check_entry(where: str, key: str, spec: object) -> None:
    if not isinstance(spec, dict):
        return
    kind = spec.get("type")
    if kind not in _RANGE_KEYS:
        raise SpaceError(f"{where}: key '{key}': 'type' must be int, float or categorical, got {kind!r}")
    extra = set(spec) - _RANGE_KEYS[kind]
    if extra:
        raise SpaceError(f"{where}: key '{key}': unknown field(s) {sorted(extra)} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: key '{key}': 'choices' must be a non-empty list")
        return
    for bound in ("low", "high"):
        v = spec.get(bound)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SpaceError(f"{where}: key '{key}': '{bound}' must be a number, got {v!r}")
        if kind == "int" and not isinstance(v, int):
            raise SpaceError(f"{where}: key '{key}': '{bound}' must be an integer for type int, got {v!r}")
    if spec["low"] > spec["high"]:
        raise SpaceError(f"{where}: key '{key}': low {spec['low']} is greater than high {spec['high']}")
    if spec.get("log") and spec["low"] <= 0:
        raise SpaceError(f"{where}: key '{key}': log scale needs low > 0, got {spec['low']}")
    if spec.get("log") and spec.get("step") not in (None, 1):
        raise SpaceError(f"{where}: key '{key}': 'step' cannot be combined with log: true")


def parse_space(path: str | Path, data: object, known: Iterable[str] | None = None) -> Space:
    """Validate a mapping read from ``path``; ``known`` lists the allowed keys (typo check)."""
    path = Path(path)
    if not isinstance(data, Mapping) or not data:
        raise SpaceError(f"{path}: expected a non-empty mapping of key: value or key: {{type: ..., ...}}")
    allowed = set(known) if known is not None else None
    for key, spec in data.items():
        if allowed is not None and key not in allowed:
            raise SpaceError(f"{path}: unknown key '{key}' (known keys: {', '.join(sorted(allowed))})")
        _check_entry(str(path), str(key), spec)
    return Space(path, dict(data))


def load_space(path: str | Path, known: Iterable[str] | None = None) -> Space:
    """Read and validate a YAML search-space file."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search-space file not found")
    return load_space_text(path.read_text(), where=str(path), known=known)


def load_space_text(text: str, *, where: str, known: Iterable[str] | None = None) -> Space:
    """Parse and validate a search space's YAML text (a file's, or one recorded in a storage); errors name ``where``."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise SpaceError(f"{at}: invalid YAML ({one_line(getattr(exc, 'problem', None) or exc)})") from exc
    return parse_space(where, data, known)
