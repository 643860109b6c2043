"""The anytime final stage: members on every labeled digit until the budget ends, never past it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_built_run

from ensemble.inference.extend import (
    MIN_FRACTION,
    Costs,
    Finished,
    MemberLate,
    choose_epochs,
    fill_budget,
    projected_end,
)


@dataclass
class FakeMachine:
    """A clock that training moves: ``epoch_s`` per epoch, ``fixed_s`` per member (predict, save, report).

    It trains epoch by epoch and stops a member whose projected end passes the deadline, as the
    stage's trainer does (MemberLate).
    """

    epoch_s: float
    fixed_s: float
    now: float = 0.0

    def clock(self) -> float:
        return self.now

    def add(self, source: str, epochs: int, deadline: float) -> Finished:
        started = self.now
        for epoch in range(1, epochs + 1):
            self.now += self.epoch_s
            if epoch < epochs and projected_end(self.now, started, epoch, epochs, self.fixed_s) > deadline:
                raise MemberLate(f"stopped at epoch {epoch}")
        self.now += self.fixed_s
        return Finished(source, epochs, epochs * self.epoch_s, self.fixed_s)


def fill(machine: FakeMachine, start: float, deadline: float, estimate: Costs, full: int, cap: int = 50):
    machine.now = start
    return fill_budget(
        deadline,
        sources=["a", "b"],
        full={"a": full, "b": full},
        costs={"a": estimate, "b": estimate},
        add_member=machine.add,
        max_members=cap,
        clock=machine.clock,
        say=lambda s: None,
    )


@pytest.mark.parametrize(
    "epoch_s, fixed_s, budget, refit_done, full",
    [
        (18.0, 45.0, 28 * 60, 16 * 60, 24),  # 2 CPU cores, the quick preset: an epoch of 42,000 digits ~18 s
        (18.0, 45.0, 28 * 60, 9 * 60, 24),  # a search that ended early
        (18.0, 45.0, 95 * 60, 58 * 60, 24),  # the standard preset
        (0.3, 4.0, 7 * 60, 6 * 60, 40),  # a GPU: 0.3 s an epoch, the best preset
        (0.3, 4.0, 7 * 60, 2 * 60, 40),
    ],
)
def test_the_final_stage_fills_the_budget_and_never_passes_it(epoch_s, fixed_s, budget, refit_done, full) -> None:
    machine = FakeMachine(epoch_s, fixed_s)
    deadline = budget - 10.0
    done = fill(machine, refit_done, deadline, Costs(epoch_s, fixed_s), full)
    assert done and machine.now <= deadline
    assert machine.now >= 0.9 * budget, (machine.now, [d.epochs for d in done])
    minimum = int(np.ceil(full * MIN_FRACTION))
    assert all(minimum <= d.epochs <= full for d in done)
    assert {d.source for d in done} == ({"a", "b"} if len(done) > 1 else {"a"})  # the configurations take turns


@pytest.mark.parametrize("actual, estimate", [(25.0, 18.0), (12.0, 18.0), (18.0, 30.0)])
def test_a_machine_slower_or_faster_than_measured_still_never_passes_the_deadline(actual, estimate) -> None:
    machine = FakeMachine(actual, 45.0)
    deadline = 28 * 60 - 10.0
    fill(machine, 14 * 60, deadline, Costs(estimate, 45.0), 24)
    assert machine.now <= deadline  # a member that would end late was dropped unfinished
    assert machine.now >= deadline - Costs(actual, 45.0).member(24)


def test_the_member_cap_and_no_time_add_nothing_more() -> None:
    machine = FakeMachine(0.3, 4.0)
    assert len(fill(machine, 0.0, 3600.0, Costs(0.3, 4.0), 40, cap=3)) == 3
    assert fill(machine, 100.0, 105.0, Costs(0.3, 4.0), 40) == []  # 5 s left: not even 10 epochs fit
    assert machine.now == 100.0


def test_choose_epochs_splits_the_time_left_evenly() -> None:
    c = Costs(10.0, 20.0)  # a full member of 24 epochs: 272 s
    assert choose_epochs(10_000.0, c, full=24, minimum=6) == 24
    assert choose_epochs(1.5 * c.member(24), c, full=24, minimum=6) == 17  # two of ~0.75 x 24 each
    assert choose_epochs(c.member(24), c, full=24, minimum=6) == 24
    assert choose_epochs(c.member(6), c, full=24, minimum=6) == 6
    assert choose_epochs(c.member(6) - 1, c, full=24, minimum=6) is None


# ---------------------------------------------------------------- on a real (tiny) run
pytest.importorskip("keras")


@pytest.fixture
def refitted(runs_env: Path, tmp_path: Path):
    from ensemble.inference.refit import refit_full

    run = tiny_built_run(tmp_path, epochs=2)
    assert refit_full(run, final="ensemble (TTA)", say=lambda s: None) is not None
    return run


@pytest.mark.slow
def test_members_join_the_refit_and_the_report_lists_them(refitted) -> None:
    import time

    from ensemble.inference.extend import extend_final
    from ensemble.inference.predict import load_ensemble, predict_proba
    from ensemble.report.final_members import final_members
    from ensemble.report.make import make_report

    run = refitted
    reports: list[int] = []
    added = extend_final(
        run, deadline=time.time() + 600, max_members=3, after=lambda: reports.append(1), say=lambda s: None
    )
    assert len(added) == 3 and len(reports) == 3  # the submission was rewritten after each member
    ens = load_ensemble(run.path("ensemble-full"))  # every hash verifies; every member loads
    extra = ens.manifest.extras
    sources = [e for e in ens.manifest.cnns if not e.extra_of]
    assert len(extra) == 3 and {e.extra_of for e in extra} == {e.name for e in sources}
    seeds = [e.refit_full.seed for e in ens.manifest.cnns if e.refit_full]
    assert len(set(seeds)) == 5  # two refits and three new members, each its own seed
    for src in sources:  # a configuration keeps its weight, shared by its members
        group = [e.weight for e in ens.manifest.members if src.name in (e.name, e.extra_of)]
        assert sum(group) == pytest.approx(src.group_weight) and len(group) >= 2
    stored = np.load(run.path("ensemble-full", "proba_test.npy"))
    assert np.allclose(predict_proba(ens, run.x_test), stored, atol=1e-5)  # `ensemble predict` agrees

    members = final_members(ens.manifest)
    assert [m.name for m in members] == [e.name for e in ens.manifest.cnns]
    assert all(m.rows == 300 and m.epochs and m.seed is not None for m in members)
    result = make_report(run, gallery=0, say=lambda s: None)
    if result.final.name == "ensemble (TTA)":  # the holdout chose the refitted model: the submission is its
        assert result.final_members == members and "Final members" in run.path("report", "report.md").read_text()
        labels = np.loadtxt(run.path("submission.csv"), delimiter=",", skiprows=1, dtype=int)[:, 1]
        assert (labels == stored.argmax(1)).all()

    assert extend_final(run, deadline=time.time() + 600, max_members=3, say=lambda s: None) == []  # the cap holds
