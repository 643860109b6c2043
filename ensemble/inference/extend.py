"""The anytime final stage: more members trained on every labeled digit until the budget ends.

After the final refit (``runs/NAME/ensemble-full``) a run usually has time left: the plan is made
from a speed probed in seconds and revised as trials finish, so it cannot end on the second. This
stage spends the rest. One member at a time, a CNN configuration of the final model is trained
again on every labeled digit with a new seed, for as many epochs as fit before the deadline. The
configurations take turns, the highest-weighted first.

- A member joins the vote only once it is finished: ``ensemble-full`` is rebuilt in a temporary
  folder with it and swapped in whole, and the caller rewrites the submission. A kill at any point
  leaves the previous folder and the submission taken from it.
- The epochs of the next member come from :func:`choose_epochs`: the time left is split evenly over
  as many members as it needs at full length, so the stage ends close to the deadline and never
  after it. A member whose training runs slower than planned stops at an epoch end (MemberLate)
  and is dropped.
- Weights: a configuration keeps the weight the build chose for it on validation, shared among its
  members in proportion to the epochs each trained.

The members have no holdout score (they trained on the holdout): the report lists them with their
configuration, seed, epochs and rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ensemble.combine.manifest import MemberEntry, read_manifest
from ensemble.errors import EnsembleError
from ensemble.inference.refit import FOLDER
from ensemble.io import read_json

if TYPE_CHECKING:
    from ensemble.data.runs import Run

MARGIN = 1.05  # an epoch is planned 5% slower than the last one measured
MIN_FRACTION = 0.25  # a member trains at least this fraction of its configuration's epochs


class MemberLate(EnsembleError):
    """A member's training would end past the deadline: it is dropped unfinished."""


@dataclass(frozen=True)
class Costs:
    """Seconds one member costs: per epoch on every labeled digit, and per member (predict, save, report)."""

    epoch_seconds: float
    fixed_seconds: float

    def member(self, epochs: int) -> float:
        return epochs * self.epoch_seconds * MARGIN + self.fixed_seconds


@dataclass(frozen=True)
class Finished:
    """What a finished member measured."""

    source: str
    epochs: int
    train_seconds: float
    other_seconds: float  # predicting, saving, swapping the folder in, rewriting the submission


def projected_end(now: float, started: float, epoch: int, epochs: int, fixed: float) -> float:
    """When a member that started at ``started`` and has trained ``epoch`` of ``epochs`` will be published."""
    return now + (now - started) / epoch * (epochs - epoch) + fixed


def choose_epochs(left: float, costs: Costs, *, full: int, minimum: int) -> int | None:
    """Epochs of the next member in ``left`` seconds, or None when not even ``minimum`` epochs fit.

    Members train ``full`` epochs while two or more fit; the last stretch is split evenly over the fewest
    members that fill it: with 1.5 full members' time left, the next member trains 0.75 of ``full``,
    and so does the one after.
    """
    if left < costs.member(minimum):
        return None
    if left >= 2 * costs.member(full):  # room for a full member and more after it
        return full
    k = max(1, math.ceil(left / costs.member(full)))
    while k >= 1:
        epochs = math.floor((left / k - costs.fixed_seconds) / (costs.epoch_seconds * MARGIN))
        if epochs >= minimum:
            return min(epochs, full)
        k -= 1
    return None


def fill_budget(
    deadline: float,
    *,
    sources: Sequence[str],
    full: dict[str, int],
    costs: dict[str, Costs],
    add_member: Callable[[str, int, float], Finished],
    max_members: int,
    clock: Callable[[], float] = time.time,
    say: Callable[[str], None] = print,
) -> list[Finished]:
    """Add members (configurations ``sources`` in turn) while the next one fits before ``deadline``.

    ``add_member(source, epochs, deadline)`` trains, publishes and returns what it measured, or raises
    MemberLate. The costs of a configuration are updated from each of its members.
    """
    done: list[Finished] = []
    costs = dict(costs)
    while len(done) < max_members and sources:
        source = sources[len(done) % len(sources)]
        minimum = max(1, math.ceil(full[source] * MIN_FRACTION))
        epochs = choose_epochs(deadline - clock(), costs[source], full=full[source], minimum=minimum)
        if epochs is None:
            say(f"no time for another member ({(deadline - clock()) / 60:.1f} min left)")
            break
        try:
            got = add_member(source, epochs, deadline)
        except MemberLate as exc:
            say(str(exc))
            break
        done.append(got)
        costs[source] = Costs(got.train_seconds / got.epochs, max(got.other_seconds, costs[source].fixed_seconds))
    return done


# ---------------------------------------------------------------- the stage on a run
COPY_SECONDS = 5.0  # per member: copying ensemble-full, hashing, swapping it in
# the first member's predicting, publishing and report are planned at twice what the refit's took (and at least
# 30 s): on a shared 2-core machine they took 47 s where the refit's predicting and report had taken 9 s
FIRST_FIXED_FACTOR = 2.0
FIRST_FIXED_MIN_S = 30.0


def extend_final(
    run: Run,
    *,
    deadline: float,
    seed: int = 0,
    max_members: int = 12,
    report_seconds: float = 0.0,
    after: Callable[[], None] = lambda: None,
    storage_url: str | None = None,
    say: Callable[[str], None] = print,
) -> list[Finished]:
    """Add members to ``ensemble-full`` until ``deadline``; ``after()`` rewrites the submission after each.

    ``report_seconds``: what ``after`` takes, counted in each member's cost.
    """
    from ensemble.inference import final_members as fm

    why = fm.can_extend(run)
    if why:
        say(f"no more final members: {why}")
        return []
    m = read_manifest(run.path(FOLDER))
    room = max_members - len(m.extras)  # a re-run continues the count
    if room <= 0:
        say(f"the final model already has {len(m.extras)} more member(s): the most this run adds")
        return []
    entries = {e.name: e for e in m.members}
    sources = fm.sources_by_weight(m)
    full = {s: fm.member_epochs(entries[s], run.path(FOLDER)) for s in sources}
    predicted = m.refit_full.predict_seconds if m.refit_full else None
    measured = float(predicted or 30.0) + report_seconds + COPY_SECONDS
    fixed = max(FIRST_FIXED_MIN_S, FIRST_FIXED_FACTOR * measured)
    costs = {s: Costs(_epoch_seconds(run, entries[s], storage_url), fixed) for s in sources}
    left = deadline - time.time()
    say(
        f"{left / 60:.1f} min left: more members of {', '.join(sources)} on all {len(run.dataset.y_train):,} "
        f"labeled digits (one epoch ~{costs[sources[0]].epoch_seconds:.0f}s), each joins the vote once finished"
    )

    def add(source: str, epochs: int, end: float) -> Finished:
        t0 = time.time()
        got = _train_and_publish(run, source, epochs, end, seed, costs[source].fixed_seconds, say)
        after()
        return replace(got, other_seconds=max(0.0, time.time() - t0 - got.train_seconds))

    return fill_budget(deadline, sources=sources, full=full, costs=costs, add_member=add, max_members=room, say=say)


def _epoch_seconds(run: Run, entry: MemberEntry, storage_url: str | None) -> float:
    """One epoch on every labeled digit: measured by the member's refit, else from its trial's speed."""
    from ensemble.inference.refit import trial_speed

    refit = entry.refit_full
    if refit is not None and refit.refit and refit.seconds and refit.epochs:
        return float(refit.seconds) / int(refit.epochs)
    return len(run.dataset.y_train) / trial_speed(run, entry, storage_url)


def _train_and_publish(
    run: Run, source: str, epochs: int, deadline: float, seed: int, fixed: float, say: Callable[[str], None]
) -> Finished:
    """Train one more member of ``source`` on every labeled digit; publish it once finished."""
    from ensemble.combine.members import member_probas, prediction_copy
    from ensemble.inference import final_members as fm
    from ensemble.search.cnn import model as cnn
    from ensemble.search.cnn.config import CnnConfig

    folder = run.path(FOLDER)
    m = read_manifest(folder)
    x, y = run.dataset.x_train, run.dataset.y_train
    member_seed = fm.member_seed(m, source, seed)
    entry = fm.new_entry(m, source, member_seed, epochs, len(y))
    config = CnnConfig.from_json(read_json(folder / str(m.member(source).config)), extra="ignore")
    config = config.replace(epochs=epochs)
    say(f"member {entry.name}: {source}'s configuration, seed {member_seed}, {epochs} epochs")
    t0 = time.time()

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        end = projected_end(time.time(), t0, epoch, epochs, fixed)
        say(f"  {entry.name} epoch {epoch}/{epochs}: accuracy {logs.get('accuracy', float('nan')):.4f}")
        if epoch < epochs and end > deadline:
            raise MemberLate(
                f"{entry.name}: stopped at epoch {epoch}/{epochs}, it would end {end - deadline:.0f}s past the "
                "deadline; dropped (the vote keeps the finished members)"
            )

    model, info = cnn.fit_model(config, x, y, seed=member_seed, on_epoch=on_epoch)
    if entry.refit_full is not None:
        entry = replace(entry, refit_full=replace(entry.refit_full, seconds=round(info["train_seconds"], 1)))
    views = list(m.tta.views)
    fast = [prediction_copy(model, entry.name)]
    proba = member_probas(fast, run.x_test, views, batch_size=256, names=[entry.name]).mean(axis=1)[0]
    fm.publish(run, entry, model, config, proba)
    say(
        f"{entry.name} joined the vote: trained in {info['train_seconds']:.0f}s, predicted the test set "
        f"and published in {time.time() - t0 - info['train_seconds']:.0f}s"
    )
    return Finished(source, epochs, float(info["train_seconds"]), 0.0)
