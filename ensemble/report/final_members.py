"""The CNNs of the submission's model, as the report lists them (from ``ensemble-full/manifest.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ensemble.combine.manifest import Manifest


@dataclass(frozen=True)
class FinalMember:
    """A CNN of the submission's model: which configuration, seed, epochs and rows it trained with."""

    name: str
    configuration: str  # the member (trial) whose configuration it trains; itself for a refit
    seed: int | None  # None: kept as trained in its trial (no refit)
    epochs: int | None
    rows: int | None  # the labeled digits it trained on
    weight: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def final_members(manifest: Manifest) -> list[FinalMember]:
    """Every CNN member of an ``ensemble-full`` manifest: the refits, then the members the final stage added."""
    out = []
    for e in manifest.cnns:
        r = e.refit_full if e.refit_full is not None and e.refit_full.refit else None
        out.append(
            FinalMember(
                name=e.name,
                configuration=e.extra_of or e.name,
                seed=r.seed if r else None,
                epochs=r.epochs if r else None,
                rows=r.rows if r else None,
                weight=round(e.weight, 4),
            )
        )
    return out
