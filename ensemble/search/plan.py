"""The budget sets the plan: how many CNN members, and how many epochs each, fit the time left.

From a measured training speed (images/s, timed on this machine under the load it has) the
planner chooses members x epochs so that the searches' trainings, and the final refit of every
member on all labeled digits, end within the seconds given:

- long trainings first: every member gets ``max_epochs`` when ``min_members`` of them fit;
- otherwise ``min_members`` members with as many epochs as fit, but no fewer than ``min_epochs``;
- otherwise one member with what fits (at least one epoch);
- more members (up to ``max_members``, a safety cap) only with time to spare.

Trainings may run several at once (``Workload.parallel``, each at the speed a trial measures): the
search then takes that fraction of the time. The final refit retrains only the members the
ensemble can hold (``refit_members``), one at a time, after the build.

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
    refit_members: int | None = None  # the refit retrains at most this many members (the ensemble's CNNs; None: all)


@dataclass(frozen=True)
class Workload:
    """What a plan is made for: the rows a member trains on and the refit's, the preset's knobs, trainings at once."""

    n_train: int
    n_all: int  # rows of the refit (every labeled digit)
    settings: PlanSettings
    parallel: int = 1  # search trainings that run at once, each at the speed given


@dataclass(frozen=True)
class Plan:
    """``members`` trainings of ``epochs`` epochs each at ``images_per_second``, and their refits."""

    members: int
    epochs: int
    images_per_second: float  # the searches' trainings (each one's speed)
    refit_images_per_second: float  # the refits' (the same as the searches' without refit)
    search_seconds: float  # the members' search trainings, overhead included (``parallel`` at a time)
    refit_seconds: float  # their refits on every labeled digit (0 without refit)
    parallel: int = 1  # search trainings at once

    @property
    def seconds(self) -> float:
        return self.search_seconds + self.refit_seconds

    def describe(self) -> str:
        refit = (
            f" + refit {_mins(self.refit_seconds)} at {self.refit_images_per_second:,.0f}" if self.refit_seconds else ""
        )
        at_once = f" ({self.parallel} at once)" if self.parallel > 1 else ""
        return (
            f"{self.members} member{'s' * (self.members != 1)} x {self.epochs} epochs fit in "
            f"{_mins(self.search_seconds)}{at_once} at {self.images_per_second:,.0f}{refit} images/s"
        )


def _mins(seconds: float) -> str:
    m = seconds / 60
    return f"{m:.0f} min" if m >= 10 else f"{m:.1f} min"


@dataclass(frozen=True)
class _Costs:
    """Seconds of one member's search training and of its refit, per epoch and per member (overhead)."""

    search_epoch: float  # already divided by the trainings at once
    search_fixed: float
    refit_epoch: float
    refit_fixed: float
    refit_cap: int  # members refitted at most

    def refits(self, done: int, more: int) -> int:
        """How many of ``more`` members after ``done`` will be refitted."""
        return max(0, min(done + more, self.refit_cap) - min(done, self.refit_cap))

    def seconds(self, done: int, more: int, epochs: int) -> float:
        """Search ``more`` members of ``epochs`` epochs after ``done``, and refit those the refit takes."""
        search = more * (epochs * self.search_epoch + self.search_fixed)
        return search + self.refits(done, more) * (epochs * self.refit_epoch + self.refit_fixed)

    def most(self, done: int, epochs: int, seconds: float, cap: int) -> int:
        """The most members (at most ``cap``) of ``epochs`` epochs that fit ``seconds`` after ``done``."""
        more = 0
        while more < cap and self.seconds(done, more + 1, epochs) <= seconds:
            more += 1
        return more

    def epochs(self, done: int, more: int, seconds: float) -> int:
        """The most epochs ``more`` members after ``done`` can train in ``seconds`` (may be < 1)."""
        r = self.refits(done, more)
        per_epoch = more * self.search_epoch + r * self.refit_epoch
        return math.floor((seconds - more * self.search_fixed - r * self.refit_fixed) / per_epoch)


def _costs(ips: float, refit_ips: float, work: Workload) -> _Costs:
    s, p = work.settings, max(1, work.parallel)
    cap = (s.refit_members if s.refit_members is not None else s.max_members) if s.refit else 0
    return _Costs(work.n_train / ips / p, s.overhead_s / p, work.n_all / refit_ips, s.overhead_s, cap)


def make_plan(seconds: float, *, images_per_second: float, work: Workload) -> Plan:
    """The plan for ``seconds`` of training at ``images_per_second`` (each training's; ``work.parallel`` at once)."""
    if images_per_second <= 0 or work.n_train <= 0:
        raise InvalidValueError("images_per_second and n_train must be positive")
    s = work.settings
    ips, refit_ips = images_per_second * s.speed_margin, images_per_second * s.refit_margin
    c = _costs(ips, refit_ips, work)
    members = c.most(0, s.max_epochs, seconds, s.max_members)
    if members >= s.min_members:
        epochs = s.max_epochs
    elif c.epochs(0, s.min_members, seconds) >= s.min_epochs:
        members, epochs = s.min_members, min(s.max_epochs, c.epochs(0, s.min_members, seconds))
    else:
        members, epochs = 1, max(1, min(s.max_epochs, c.epochs(0, 1, seconds)))
    search = c.seconds(0, members, epochs) - c.refits(0, members) * (epochs * c.refit_epoch + c.refit_fixed)
    refit = c.refits(0, members) * (epochs * c.refit_epoch + c.refit_fixed)
    return Plan(members, epochs, ips, refit_ips, search, refit, max(1, work.parallel))


def revise(plan: Plan, *, done: int, seconds_left: float, images_per_second: float, work: Workload) -> Plan:
    """The plan after ``done`` members finished; ``seconds_left`` must also pay for their refits.

    ``images_per_second``: the speed the last trial measured (the next searches' speed, each of the
    ``work.parallel`` trainings that run at once). The refits' speed is re-estimated from it, since the
    probe (a few seconds) can be far off either way: the trial's speed scaled from "beside the
    baselines" to "alone" (``refit_margin / speed_margin``) caps the plan's; and as the refits run
    alone, ``REFIT_FROM_TRIAL`` x the trial's speed is a floor.
    Returns the whole plan: ``members`` counts the finished ones too (at least 1), ``epochs`` is what
    the next members train. Members keep the planned epochs while whole
    ones fit; when the time left holds no whole member but one of at least ``min_epochs`` fits, one
    more member trains that many. ``search_seconds`` and ``refit_seconds`` count only what is still to do.
    """
    s, ips = work.settings, images_per_second
    alone = images_per_second * s.refit_margin / s.speed_margin
    refit_ips = max(min(plan.refit_images_per_second, alone), REFIT_FROM_TRIAL * images_per_second)
    c = _costs(ips, refit_ips, work)
    owed = min(done, c.refit_cap) * (plan.epochs * c.refit_epoch + c.refit_fixed)
    left = seconds_left - owed
    room = s.max_members - done
    epochs, more = plan.epochs, c.most(done, plan.epochs, left, room) if room > 0 else 0
    if more == 0 and room > 0:
        fit = c.epochs(done, 1, left)
        if fit >= s.min_epochs:
            epochs, more = min(fit, s.max_epochs), 1
    refit = c.refits(done, more) * (epochs * c.refit_epoch + c.refit_fixed)
    search = c.seconds(done, more, epochs) - refit
    return Plan(max(1, done + more), epochs, ips, refit_ips, search, owed + refit, max(1, work.parallel))
