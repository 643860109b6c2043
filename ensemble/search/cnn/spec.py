"""What ``ensemble worker`` needs to join a run's CNN study, recorded in the study (its user attr ``SPEC_ATTR``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from ensemble.search.spaces import Space


SPEC_ATTR = "search_spec"


def publish(study: optuna.Study, space: Space, *, target: int, count: str, epochs: int | None, pruner: str) -> None:
    """Record (or update) what a worker needs to join this study."""
    spec = {
        "space": space.path.read_text(),
        "space_name": space.path.name,
        "target": int(target),
        "count": count,  # "finished" (complete, pruned or failed on their own) or "complete"
        "epochs": epochs,
        "pruner": pruner,
    }
    if study.user_attrs.get(SPEC_ATTR) != spec:
        study.set_user_attr(SPEC_ATTR, spec)


def update(study: optuna.Study, **changes: Any) -> None:
    """Change some fields of the published spec (the plan's revisions: target and epochs)."""
    spec = study.user_attrs.get(SPEC_ATTR)
    if spec is not None and any(spec.get(k) != v for k, v in changes.items()):
        study.set_user_attr(SPEC_ATTR, {**spec, **changes})
