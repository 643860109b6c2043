"""The parts of a manifest (:mod:`ensemble.combine.manifest`): scores, comparisons, weights, TTA, data, refits.

Each record is frozen, reads itself with ``from_json(Fields)`` and writes ``to_json()`` with the keys in the
order ``manifest.json`` has always had them; an optional key that is None is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ensemble.combine.jsonfields import Fields, JsonObject, JsonValue, compact
from ensemble.errors import ArtifactError


class Comparison(StrEnum):
    """The keys of a manifest's ``metrics``: what ``ensemble build`` compared on validation and holdout.

    Stored as their string values, so older manifests read the same.
    """

    BEST_SINGLE = "best_single"
    TOP_K_EQUAL = "top_k_equal"
    TOP_K_EQUAL_TTA = "top_k_equal_tta"
    TOP_K_GREEDY_TTA = "top_k_greedy_tta"
    TOP_K_EQUAL_TTA_REFIT = "top_k_equal_tta_refit"
    TOP_K_GREEDY_TTA_REFIT = "top_k_greedy_tta_refit"

    @classmethod
    def final(cls, weights: str) -> Comparison:
        """The final ensemble's entry: the top CNNs (and baselines) with ``weights``, over the TTA views."""
        return cls(f"top_k_{weights}_tta")

    @classmethod
    def final_refit(cls, weights: str) -> Comparison:
        """The same ensemble with its CNNs refitted on train + validation (``ensemble build --refit``)."""
        return cls(f"top_k_{weights}_tta_refit")


class EnsembleRow(StrEnum):
    """The report's rows for the built ensemble; each may be the final model the refit and ``predict`` load."""

    ENSEMBLE = "ensemble"  # its views are the identity only: one row
    TTA = "ensemble (TTA)"
    NO_TTA = "ensemble (no TTA)"  # the same members and weights, the identity view only

    @classmethod
    def parse(cls, name: str) -> EnsembleRow | None:
        """The row ``name`` spells, or None (a trial's model)."""
        try:
            return cls(name)
        except ValueError:
            return None


@dataclass(frozen=True)
class Score:
    """Accuracy and log loss of some probabilities."""

    accuracy: float
    logloss: float

    @classmethod
    def from_json(cls, f: Fields) -> Score:
        return cls(f.get("accuracy", float), f.get("logloss", float))

    def to_json(self) -> JsonObject:
        return {"accuracy": self.accuracy, "logloss": self.logloss}


@dataclass(frozen=True)
class ComparisonResult:
    """One entry of ``metrics``: holdout (and validation) scores; ``member`` names the best single CNN."""

    holdout: Score
    val: Score | None = None
    member: str | None = None

    @classmethod
    def from_json(cls, f: Fields) -> ComparisonResult:
        val = f.opt_sub("val")
        return cls(Score.from_json(f.sub("holdout")), val and Score.from_json(val), f.opt("member", str))

    def to_json(self) -> JsonObject:
        val = self.val and self.val.to_json()
        return compact([("member", self.member), ("val", val), ("holdout", self.holdout.to_json())])


Metrics = dict[Comparison, ComparisonResult]


def metrics_from_json(f: Fields | None) -> Metrics | None:
    if f is None:
        return None
    out = {}
    for key in f.obj:
        try:
            which = Comparison(key)
        except ValueError:
            known = ", ".join(Comparison)
            raise ArtifactError(f"{f.where}: {f.key(key)!r} is not a comparison (one of {known})") from None
        out[which] = ComparisonResult.from_json(f.sub(key))
    return out


def metrics_to_json(metrics: Metrics | None) -> JsonObject | None:
    return None if metrics is None else {str(k): v.to_json() for k, v in metrics.items()}


@dataclass(frozen=True)
class GreedyStep:
    """One round of the greedy weights: the member picked and the ensemble's validation scores after it."""

    pick: str
    val_logloss: float
    val_accuracy: float

    def to_json(self) -> JsonObject:
        return {"pick": self.pick, "val_logloss": self.val_logloss, "val_accuracy": self.val_accuracy}


@dataclass(frozen=True)
class Weights:
    """How the weights were chosen: ``equal``, ``greedy`` (with its trajectory) or ``single`` (one trial)."""

    mode: str
    seed: int | None = None
    n_iter: int | None = None
    metric: str | None = None
    best_iter: int | None = None
    trajectory: tuple[GreedyStep, ...] | None = None

    @classmethod
    def from_json(cls, f: Fields) -> Weights:
        steps = None
        if f.has("trajectory"):
            steps = tuple(
                GreedyStep(s.get("pick", str), s.get("val_logloss", float), s.get("val_accuracy", float))
                for s in f.items("trajectory")
            )
        ints = (f.opt("seed", int), f.opt("n_iter", int))
        return cls(f.get("mode", str), *ints, f.opt("metric", str), f.opt("best_iter", int), steps)

    def to_json(self) -> JsonObject:
        steps = None if self.trajectory is None else [s.to_json() for s in self.trajectory]
        pairs = [("mode", self.mode), ("seed", self.seed), ("n_iter", self.n_iter), ("metric", self.metric)]
        return compact([*pairs, ("best_iter", self.best_iter), ("trajectory", steps)])


@dataclass(frozen=True)
class Tta:
    """The test-time augmentation: the views kept, and how they were chosen (``auto``, ``list``, ``none``)."""

    views: tuple[str, ...]
    mode: str | None = None
    min_gain_se: float | None = None
    candidates: tuple[str, ...] | None = None
    steps: JsonValue = None  # the selection's rounds, as select_views records them
    gain_val: dict[str, Score] | None = None  # identity and tta: the equal-weight CNNs on validation

    @classmethod
    def from_json(cls, f: Fields) -> Tta:
        views = f.strings("views")
        if views is None:
            raise f.fail("views", "a list of strings")
        gain = f.opt_sub("gain_val")
        gains = None if gain is None else {k: Score.from_json(gain.sub(k)) for k in gain.obj}
        cands = f.strings("candidates")
        return cls(views, f.opt("mode", str), f.opt("min_gain_se", float), cands, f.json("steps"), gains)

    def to_json(self) -> JsonObject:
        gain = None if self.gain_val is None else {k: s.to_json() for k, s in self.gain_val.items()}
        cands = None if self.candidates is None else list(self.candidates)
        pairs = [("mode", self.mode), ("min_gain_se", self.min_gain_se), ("views", list(self.views))]
        return compact([*pairs, ("candidates", cands), ("steps", self.steps), ("gain_val", gain)])


@dataclass(frozen=True)
class DataInfo:
    """The data the members were made from: the run's fingerprint, the test set's fingerprint and size, the split."""

    fingerprint: str | None
    test_fingerprint: str | None
    n_test: int | None
    split: dict[str, int] | None = None  # rows of train, val, holdout

    @classmethod
    def from_json(cls, f: Fields) -> DataInfo:
        split = f.opt_sub("split")
        sizes = None if split is None else {k: split.get(k, int) for k in split.obj}
        return cls(f.opt("fingerprint", str), f.opt("test_fingerprint", str), f.opt("n_test", int), sizes)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"fingerprint": self.fingerprint, "test_fingerprint": self.test_fingerprint}
        out["n_test"] = self.n_test
        return out if self.split is None else {**out, "split": dict(self.split)}


@dataclass(frozen=True)
class KerasInfo:
    """The Keras backend and version that built (or refitted) the members."""

    backend: str
    version: str

    @classmethod
    def from_json(cls, f: Fields) -> KerasInfo:
        return cls(f.get("backend", str), f.get("version", str))

    def to_json(self) -> JsonObject:
        return {"backend": self.backend, "version": self.version}


@dataclass(frozen=True)
class TrainValRefit:
    """A member's ``ensemble build --refit``: retrained on train + validation for ``epochs``."""

    epochs: int
    rows: int

    @classmethod
    def from_json(cls, f: Fields) -> TrainValRefit:
        return cls(f.get("epochs", int), f.get("rows", int))

    def to_json(self) -> JsonObject:
        return {"epochs": self.epochs, "rows": self.rows}


@dataclass(frozen=True)
class MemberRefit:
    """A member's final refit on every labeled digit: refitted (epochs, rows, seed, seconds) or kept, and why."""

    refit: bool
    reason: str | None = None
    epochs: int | None = None
    rows: int | None = None
    seed: int | None = None
    seconds: float | None = None
    device: str | None = None  # the device it refitted on, with several devices

    @classmethod
    def from_json(cls, f: Fields) -> MemberRefit:
        sizes = (f.opt("epochs", int), f.opt("rows", int), f.opt("seed", int))
        return cls(f.get("refit", bool), f.opt("reason", str), *sizes, f.opt("seconds", float), f.opt("device", str))

    def to_json(self) -> JsonObject:
        pairs = [("refit", self.refit), ("reason", self.reason), ("epochs", self.epochs), ("rows", self.rows)]
        return compact([*pairs, ("seed", self.seed), ("seconds", self.seconds), ("device", self.device)])


@dataclass(frozen=True)
class RefitFull:
    """What ``ensemble-full`` was refitted from: the final model and the sha256 of its source, on how many rows."""

    final: str
    source_sha256: str
    rows: int
    created: str
    note: str
    predict_seconds: float | None = None  # per member: its TTA test predictions
    extra_members: int | None = None  # members the final stage added

    @classmethod
    def from_json(cls, f: Fields) -> RefitFull:
        head = (f.get("final", str), f.get("source_sha256", str), f.get("rows", int))
        tail = (f.opt("predict_seconds", float), f.opt("extra_members", int))
        return cls(*head, f.get("created", str), f.get("note", str), *tail)

    def to_json(self) -> JsonObject:
        head = [("final", self.final), ("source_sha256", self.source_sha256), ("rows", self.rows)]
        tail = [("created", self.created), ("note", self.note), ("extra_members", self.extra_members)]
        return compact([*head, ("predict_seconds", self.predict_seconds), *tail])
