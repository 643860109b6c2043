"""The presets of ``ensemble run``: everything a preset fixes (budget, spaces, plan, baselines, ensembling)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ensemble.errors import UsageError
from ensemble.search.cnn.parallel import parse_jobs
from ensemble.search.devices import check_choice
from ensemble.search.plan import PlanSettings


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Every setting of ``ensemble run`` (``--set KEY=VALUE`` overrides one; ``plan`` takes a JSON object)."""

    budget: str  # the time budget, e.g. "28m"
    space: str  # a shipped CNN search space or a path
    cnn_trials: int  # a cap: the budget's plan sets how many members (and epochs) fit
    plan: PlanSettings | None  # None: no plan, cnn_trials trials of the space's epochs
    refit_full: bool  # refit the final model's CNNs on every labeled digit for the submission
    max_train: int | None  # train the CNNs on at most this many rows (None: all)
    pruner: str  # median, hyperband or none
    mixed_precision: bool | str  # float16 compute; "auto": on when Keras sees a GPU
    baselines: str  # comma list of families ("" for none)
    baseline_trials: int
    baseline_nice: int
    baseline_cores: int | str  # cores for the baselines child (at most all but one); "auto": all but 4
    top_k: int
    weights: str  # equal or greedy
    tta: str  # auto, none or a list of views
    include_baselines: bool
    shares: dict[str, float] = field(default_factory=dict)  # how the budget is split across stages
    # CNN trials that train at once on the device, each in its own trainer process; "auto": measured over
    # the first trials (1, 2, 4, ... while the images trained per second grow)
    trials_per_device: int | str = 1
    # the devices the CNN trainers use: "all" found (CUDA_VISIBLE_DEVICES, nvidia-smi -L, the backend), "cpu",
    # or GPU ids such as "0,1" (ensemble.search.devices); trials_per_device trainers on each
    devices: str = "all"
    seed: int = 0
    # the anytime final stage: at most this many more members of the final model's CNNs, trained on every
    # labeled digit with new seeds while they fit the budget (0: off); see ensemble.inference.extend
    final_members: int = 12

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


#: Everything a preset sets, in one place. "shares": how the time budget is split across stages.
PRESETS: dict[str, Preset] = {
    "quick": Preset(  # CPU, 2 cores: <= 30 min on the 42k Kaggle data
        budget="28m",
        space="cnn_quick.yaml",
        cnn_trials=8,  # a cap: the budget's plan sets how many members (and epochs) fit
        # margins: fractions of the probed speed (the probe runs alone). Measured on 2 cores: search trials
        # beside the baselines 0.68-0.75 (1,650-1,670 vs 2,300-2,600 images/s), a refit alone 0.80-0.84
        plan=PlanSettings(
            min_epochs=12,
            max_epochs=24,
            min_members=2,
            max_members=8,
            overhead_s=20.0,
            speed_margin=0.7,
            refit_margin=0.8,
        ),
        refit_full=True,  # refit the final model's CNNs on every labeled digit for the submission
        max_train=None,
        # no median pruning: with time for ~4 trials, epoch-3 accuracy under a one-cycle schedule
        # says little (a measured run pruned 4 of 6 trials and kept 2 members); the deadline still stops trials
        pruner="none",
        mixed_precision=False,  # float16 compute; "auto": on when Keras sees a GPU
        baselines="logreg,knn,svm,extratrees",
        baseline_trials=2,
        baseline_nice=5,
        baseline_cores=1,  # cores for the baselines child (at most all but one)
        top_k=5,
        weights="greedy",
        tta="auto",
        # the deskewed baselines are diverse enough to help: on Kaggle's data greedy selection with
        # them reached 0.9950 validation / 0.9960 holdout vs 0.9938 / 0.9950 for the 3 CNNs alone
        include_baselines=True,
        shares={"search": 0.87, "build": 0.09, "report": 0.04},
    ),
    "standard": Preset(  # CPU, a couple of hours
        budget="2h",
        # cnn.yaml's different widths and kernels, not one fast network many times: on Kaggle's data 3 such
        # members voted to 11 holdout errors (s4), 12 of the 24-filter 3x3 network for 20 epochs to 15 (s5)
        space="cnn.yaml",
        cnn_trials=30,
        plan=PlanSettings(
            min_epochs=20,
            max_epochs=24,
            min_members=3,
            max_members=12,
            overhead_s=20.0,
            speed_margin=0.7,
            refit_margin=0.8,
            # time is reserved for refitting 2 CNNs; the refit takes the final model's CNNs in order and keeps
            # those that no longer fit the budget as trained. Reserving 5 left 44-49 min unused (s4, s5: the
            # final model was one CNN) where the search could have trained more members
            refit_members=2,
        ),
        refit_full=True,
        max_train=None,
        # no median pruning: measured on Kaggle's data it pruned 6 of 9 (s1) and 10 of 14 (s2) trials at epoch 3,
        # among them the known-good default; members planned with different epoch counts (the plan revises
        # them) have different one-cycle warm-ups, so their epoch-3 accuracies do not compare
        pruner="none",
        mixed_precision=False,  # float16 compute; "auto": on when Keras sees a GPU
        baselines="logreg,rf,extratrees,knn,svm,xgboost",
        baseline_trials=4,
        baseline_nice=5,
        baseline_cores=1,
        top_k=5,
        # an equal-weight vote of the top CNNs: greedy weights, fitted on 4,200 validation digits with the
        # baselines, lost 3, 1 and 1 holdout digits against it in s4, s5 and s2 (gained 1 in s1)
        weights="equal",
        tta="auto",
        include_baselines=False,  # baselines stay on the leaderboard; in an equal vote they would dilute the CNNs
        shares={"search": 0.85, "build": 0.11, "report": 0.04},
    ),
    "best": Preset(  # a GPU (or a long CPU run): wider, deeper CNNs, more epochs and trials
        budget="6h",
        space="cnn_best.yaml",
        cnn_trials=100,
        # on a GPU a trial of 20-40 epochs takes seconds: a 10-minute budget has room for many of them.
        # The refit retrains only the ensemble's CNNs (top_k), so the plan reserves time for those only
        plan=PlanSettings(
            min_epochs=20, max_epochs=40, min_members=5, max_members=100, overhead_s=10.0, refit_members=7
        ),
        refit_full=True,
        max_train=None,
        pruner="median",
        # "auto" would turn float16 on with a GPU; off: on an H200 it was slower for these small CNNs
        # (ours, batch 512: 207-238k vs 254-264k images/s in float32; benchmarks/gpu_throughput.py)
        mixed_precision=False,
        baselines="logreg,rf,extratrees,knn,svm,xgboost",
        baseline_trials=8,
        baseline_nice=5,
        baseline_cores="auto",  # the CNNs train on the GPU: the baselines take all cores but 4
        top_k=7,
        weights="greedy",
        tta="auto",
        include_baselines=True,
        shares={"search": 0.88, "build": 0.09, "report": 0.03},
        trials_per_device="auto",
    ),
}


STAGES = ("data", "cnn_search", "baselines", "build", "report", "refit", "final")


REFERENCE_ROWS = 42_000  # the presets' budgets are sized for Kaggle's labeled digits
MIN_SCALED_S = 120.0  # a scaled budget is never shorter than this (nor than the preset's)


def scaled_budget(seconds: float, rows: int) -> float:
    """A preset's budget for ``rows`` labeled digits: in proportion to the rows, up to the preset's."""
    return max(min(seconds, MIN_SCALED_S), seconds * min(1.0, rows / REFERENCE_ROWS))


OVERRIDES_ENV = "ENSEMBLE_RUN_OVERRIDES"  # JSON object merged into the preset (tests, experiments)


def settings_for(preset: str, overrides: Mapping[str, object] | None = None) -> Preset:
    """The preset's settings with overrides ($ENSEMBLE_RUN_OVERRIDES, then ``overrides``) applied."""
    if preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got '{preset}'")
    s = PRESETS[preset]
    env = os.environ.get(OVERRIDES_ENV)
    known = [f.name for f in dataclasses.fields(Preset)]
    for extra in (json.loads(env) if env else {}, overrides or {}):
        unknown = set(extra) - set(known)
        if unknown:
            raise UsageError(f"unknown run setting(s) {sorted(unknown)}; known: {', '.join(known)}")
        s = dataclasses.replace(s, **{k: _checked(s, k, v) for k, v in extra.items()})
    return s


def _checked(s: Preset, key: str, value: object) -> object:
    """``value`` for setting ``key``, of the type the setting has (a JSON object for ``plan``)."""
    if key == "plan":
        if value is None:
            return None
        if not isinstance(value, dict):
            raise UsageError(f"--set plan= needs a JSON object or null, got {value!r}")
        try:
            return PlanSettings(**value)
        except TypeError as exc:
            raise UsageError(f"--set plan=: {exc}") from exc
    current = getattr(s, key)
    if key in ("trials_per_device", "baseline_cores"):
        try:
            return parse_jobs(value)
        except UsageError:
            raise UsageError(f"--set {key}=: expected a positive integer or auto, got {value!r}") from None
    if key == "devices":
        return check_choice(value)
    if key == "max_train":
        ok = value is None or isinstance(value, int) and not isinstance(value, bool) and value > 0
    elif key == "mixed_precision":
        ok = isinstance(value, bool) or value == "auto"
    elif isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise UsageError(f"--set {key}=: expected a value like {current!r}, got {value!r}")
    return value


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, true, null), else as text."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set needs KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def describe_presets() -> str:
    """One line per preset for --help."""
    return "; ".join(
        f"{k}: budget {v.budget}, CNN members x epochs planned from the measured speed (at most "
        f"{v.cnn_trials} trials, {_epochs(v.plan)} epochs, {v.space}), "
        f"final refit on all labels {'on' if v.refit_full else 'off'}, baselines {v.baselines}"
        + (f", CNN trials at once: {v.trials_per_device}" if v.trials_per_device != 1 else "")
        for k, v in PRESETS.items()
    )


def _epochs(plan: PlanSettings | None) -> str:
    return f"{plan.min_epochs}-{plan.max_epochs}" if plan else "the space's"
