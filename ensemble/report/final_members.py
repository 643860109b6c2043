"""The CNNs of the submission's model, as the report lists them (from ``ensemble-full/manifest.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FinalMember:
    """A CNN of the submission's model: which configuration, seed, epochs and rows it trained with."""

    name: str
    configuration: str  # the member (trial) whose configuration it trains; itself for a refit
    seed: int | None  # None: kept as trained in its trial (no refit)
    epochs: int | None
    rows: int | None  # the labeled digits it trained on
    weight: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_members(manifest: dict[str, Any]) -> list[FinalMember]:
    """Every CNN member of an ``ensemble-full`` manifest: the refits, then the members the final stage added."""
    out = []
    for e in manifest["members"]:
        if e["kind"] != "cnn":
            continue
        r = e.get("refit_full") or {}
        refit = bool(r.get("refit"))
        out.append(
            FinalMember(
                name=e["name"],
                configuration=e.get("extra_of") or e["name"],
                seed=r.get("seed") if refit else None,
                epochs=r.get("epochs") if refit else None,
                rows=r.get("rows") if refit else None,
                weight=round(float(e["weight"]), 4),
            )
        )
    return out
