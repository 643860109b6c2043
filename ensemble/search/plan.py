"""The budget sets the plan: how many CNN members, and how many epochs each, fit the time left.

From a measured training speed (images/s, timed on this machine under the load it has) the
planner chooses members x epochs so that the searches' trainings, and the final refit of every
member on all labeled digits, end within the seconds given:

- long trainings first: every member gets ``max_epochs`` when ``min_members`` of them fit;
- otherwise ``min_members`` members with as many epochs as fit, but no fewer than ``min_epochs``;
- otherwise one member with what fits (at least one epoch);
- more members (up to ``max_members``, a safety cap) only with time to spare.

Two speeds enter: the searches' trainings share the CPU with the baseline searches, so they run at
``speed_margin`` x the probed speed (the probe runs alone); the refits run alone after the build, at
``refit_margin`` x the probed speed (process start-up, compilation and prediction cost the rest).

The plan is revised after every trial from the time left and the speed that trial measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ensemble.errors import InvalidValueError

REFIT_FROM_TRIAL = 0.9  # a refit's speed, at least, as a fraction of a finished trial's (same model, alone)


@dataclass(frozen=True)
class PlanSettings:
    """A preset's planning knobs."""

    min_epochs: int = 12
    max_epochs: int = 24
    min_members: int = 2
    max_members: int = 8
    overhead_s: float = 20.0  # per member: process start, compile, predicting val/holdout/test, saving
    refit: bool = True
    speed_margin: float = 1.0  # search trainings run at this fraction of the probed speed (beside the baselines)
    refit_margin: float = 1.0  # refits (alone, after the build) run at this fraction of the probed speed


@dataclass(frozen=True)
class Plan:
    """``members`` trainings of ``epochs`` epochs each at ``images_per_second``, and their refits."""

    members: int
    epochs: int
    images_per_second: float  # the searches' trainings
    refit_images_per_second: float  # the refits' (the same as the searches' without refit)
    search_seconds: float  # the members' search trainings, overhead included
    refit_seconds: float  # their refits on every labeled digit (0 without refit)

    @property
    def seconds(self) -> float:
        return self.search_seconds + self.refit_seconds

    def describe(self) -> str:
        refit = (
            f" + refit {_mins(self.refit_seconds)} at {self.refit_images_per_second:,.0f}" if self.refit_seconds else ""
        )
        return (
            f"{self.members} member{'s' * (self.members != 1)} x {self.epochs} epochs fit in "
            f"{_mins(self.search_seconds)} at {self.images_per_second:,.0f}{refit} images/s"
        )


def _mins(seconds: float) -> str:
    m = seconds / 60
    return f"{m:.0f} min" if m >= 10 else f"{m:.1f} min"


def make_plan(seconds: float, *, images_per_second: float, n_train: int, n_all: int, settings: PlanSettings) -> Plan:
    """The plan for ``seconds`` of training time at ``images_per_second`` (``n_all``: rows of the refit)."""
    if images_per_second <= 0 or n_train <= 0:
        raise InvalidValueError("images_per_second and n_train must be positive")
    s = settings
    ips, refit_ips = images_per_second * s.speed_margin, images_per_second * s.refit_margin
    per_epoch = n_train / ips + (n_all / refit_ips if s.refit else 0.0)
    overhead = s.overhead_s * (2 if s.refit else 1)

    def epochs_for(members: int) -> int:
        return math.floor((seconds / members - overhead) / per_epoch)

    members = min(s.max_members, max(0, math.floor(seconds / (s.max_epochs * per_epoch + overhead))))
    if members >= s.min_members:
        epochs = s.max_epochs
    elif epochs_for(s.min_members) >= s.min_epochs:
        members, epochs = s.min_members, min(s.max_epochs, epochs_for(s.min_members))
    else:
        members, epochs = 1, max(1, min(s.max_epochs, epochs_for(1)))
    return _plan(members, epochs, ips, refit_ips, n_train, n_all, s)


def _plan(members: int, epochs: int, ips: float, refit_ips: float, n_train: int, n_all: int, s: PlanSettings) -> Plan:
    search = members * (epochs * n_train / ips + s.overhead_s)
    refit = members * (epochs * n_all / refit_ips + s.overhead_s) if s.refit else 0.0
    return Plan(members, epochs, ips, refit_ips, search, refit)


def revise(
    plan: Plan,
    *,
    done: int,
    seconds_left: float,
    images_per_second: float,
    n_train: int,
    n_all: int,
    settings: PlanSettings,
) -> Plan:
    """The plan after ``done`` members finished; ``seconds_left`` must also pay for their refits.

    ``images_per_second``: the speed the last trial measured (the next searches' speed). The refits'
    speed is re-estimated from it, since the probe (a few seconds) can be far off either way: the
    trial's speed scaled from "beside the baselines" to "alone" (``refit_margin / speed_margin``)
    caps the plan's; and as the refits run alone, ``REFIT_FROM_TRIAL`` x the trial's speed is a floor.
    Returns the whole plan: ``members`` counts the finished ones too (at least 1), ``epochs`` is what
    the next members train. Members keep the planned epochs while whole
    ones fit; when the time left holds no whole member but one of at least ``min_epochs`` fits, one
    more member trains that many. ``search_seconds`` and ``refit_seconds`` count only what is still to do.
    """
    s, ips = settings, images_per_second
    alone = images_per_second * s.refit_margin / s.speed_margin
    refit_ips = max(min(plan.refit_images_per_second, alone), REFIT_FROM_TRIAL * images_per_second)
    owed = done * (plan.epochs * n_all / refit_ips + s.overhead_s) if s.refit else 0.0
    left = seconds_left - owed
    per_epoch = n_train / ips + (n_all / refit_ips if s.refit else 0.0)
    overhead = s.overhead_s * (2 if s.refit else 1)
    room = s.max_members - done
    epochs, more = plan.epochs, min(room, max(0, math.floor(left / (plan.epochs * per_epoch + overhead))))
    if more == 0 and room > 0:
        fit = math.floor((left - overhead) / per_epoch)
        if fit >= s.min_epochs:
            epochs, more = min(fit, s.max_epochs), 1
    search = more * (epochs * n_train / ips + s.overhead_s)
    refit = owed + (more * (epochs * n_all / refit_ips + s.overhead_s) if s.refit else 0.0)
    return Plan(max(1, done + more), epochs, ips, refit_ips, search, refit)  # a run needs a model
