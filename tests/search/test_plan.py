"""The budget sets the plan: members x epochs from the measured speed, revised as trials finish."""

from __future__ import annotations

import dataclasses

import pytest

from ensemble.search.plan import Plan, PlanSettings, Workload, make_plan, revise

QUICK = PlanSettings(min_epochs=12, max_epochs=24, min_members=2, max_members=8, overhead_s=20.0)
N_TRAIN, N_ALL = 33_600, 42_000


def work(settings: PlanSettings = QUICK, parallel: int = 1) -> Workload:
    return Workload(n_train=N_TRAIN, n_all=N_ALL, settings=settings, parallel=parallel)


def plan_for(seconds: float, ips: float, settings: PlanSettings = QUICK) -> Plan:
    return make_plan(seconds, images_per_second=ips, work=work(settings))


def test_slow_and_fast_machines_get_different_plans_in_the_same_budget() -> None:
    budget = 24 * 60.0
    slow, fast = plan_for(budget, 1_000), plan_for(budget, 6_000)
    assert (slow.members, slow.epochs) == (1, 18)  # not even 2 x 12 fit: one member, as long as fits
    assert (fast.members, fast.epochs) == (4, 24)  # long trainings first, then as many members as fit
    mid = plan_for(budget, 2_300)
    assert mid.members == 2 and QUICK.min_epochs <= mid.epochs < QUICK.max_epochs
    for p in (slow, fast, mid):
        assert p.seconds <= budget  # searches and refits fit the time given
    assert "2 members x 20 epochs fit in" in mid.describe() and "at 2,300 images/s" in mid.describe()


def test_without_refit_more_fits() -> None:
    off = PlanSettings(**{**QUICK.__dict__, "refit": False})
    with_refit, without = plan_for(1_500, 2_300), plan_for(1_500, 2_300, off)
    assert without.refit_seconds == 0 and with_refit.refit_seconds > 0
    assert (without.members, without.epochs) > (with_refit.members, with_refit.epochs)


@pytest.mark.parametrize("seconds", [0.0, 5.0])
def test_no_time_still_plans_one_short_member(seconds: float) -> None:
    p = plan_for(seconds, 2_000)
    assert (p.members, p.epochs) == (1, 1)


def test_revision_follows_the_measured_speed() -> None:
    start = plan_for(1_800, 3_000)
    assert start.members >= 2

    def again(done: int, left: float, ips: float) -> Plan:
        return revise(start, done=done, seconds_left=left, images_per_second=ips, work=work(QUICK))

    slower, faster = again(1, 1_400, 2_400), again(1, 1_400, 6_000)
    assert faster.epochs == start.epochs and faster.members > slower.members >= 1
    # no whole member fits any more, but a shorter one (>= min_epochs) does: it trains fewer epochs
    short = again(1, 1_000, 3_000)
    assert short.members == 2 and QUICK.min_epochs <= short.epochs < start.epochs
    assert short.search_seconds + short.refit_seconds <= 1_000
    assert again(1, 500, 3_000).members == 1  # not even a short one: stop
    assert again(0, -5, 3_000).members == 1  # a run always gets a model


@pytest.mark.parametrize(("member_s", "trials", "epochs"), [(900.0, 2, 20), (1_300.0, 1, 24)])
def test_planned_search_stops_the_study_with_a_fake_clock(
    monkeypatch: pytest.MonkeyPatch, member_s: float, trials: int, epochs: int
) -> None:
    import optuna

    from ensemble.search import planned as search_plan

    now = [1_000.0]
    monkeypatch.setattr(search_plan.time, "time", lambda: now[0])
    said: list[str] = []
    start = plan_for(1_800, 3_000)
    assert (start.members, start.epochs) == (2, 24)  # what fits before any trial ran
    planned = search_plan.PlannedSearch(start, work(), 1_000.0 + 1_800, said.append)
    first_deadline = planned.deadline
    study = optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        now[0] += member_s  # each member takes longer on the fake clock than the plan expected
        trial.set_user_attr("images_per_second", 3_000.0)
        return 0.99

    study.optimize(objective, n_trials=10, callbacks=[planned.callback])
    # 900 s a member: two still fit, with fewer epochs; 1,300 s: the second member no longer fits
    assert len(study.trials) == planned.plan.members == trials  # stopped by the revised plan, not the cap
    assert [h["epochs"] for h in planned.history][-1] == planned.plan.epochs == epochs
    assert planned.deadline != first_deadline  # fewer or shorter refits: the search may run longer
    assert said[-1].startswith("plan (after trial") and len(planned.history) == len(study.trials)


def test_speed_margin_makes_the_first_plan_cautious() -> None:
    cautious = PlanSettings(**{**QUICK.__dict__, "speed_margin": 0.85})
    full, careful = plan_for(1_530, 2_312), plan_for(1_530, 2_312, cautious)
    assert careful.members == full.members == 2 and careful.epochs < full.epochs
    assert careful.images_per_second == pytest.approx(0.85 * 2_312)


def test_refits_are_planned_at_their_own_speed() -> None:
    # a measured quick run: probe 2,467 images/s alone, the first trial 1,665 beside the baselines
    settings = PlanSettings(**{**QUICK.__dict__, "speed_margin": 0.7, "refit_margin": 0.8})
    start = plan_for(1_500, 2_467, settings)
    assert start.members == 2 and start.refit_images_per_second == pytest.approx(0.8 * 2_467)
    assert start.images_per_second == pytest.approx(0.7 * 2_467) and start.seconds <= 1_500
    trial_s = start.epochs * N_TRAIN / 1_665 + 20
    after = revise(start, done=1, seconds_left=1_500 - trial_s, images_per_second=1_665, work=work(settings))
    assert after.members == 2 and after.epochs >= QUICK.min_epochs  # the second member still fits
    # refits run alone: the trial's speed scaled from "beside the baselines" to "alone", not the trial's own
    assert after.refit_images_per_second == pytest.approx(1_665 * 0.8 / 0.7)
    assert after.search_seconds + after.refit_seconds <= 1_500 - trial_s
    # planning the refits at the trial's slow speed would shorten (or drop) the second member for nothing
    slow = dataclasses.replace(start, refit_images_per_second=1_665)
    assert (
        revise(slow, done=1, seconds_left=1_500 - trial_s, images_per_second=1_665, work=work(settings)).epochs
        < after.epochs
    )


def test_a_trial_faster_than_the_probe_speeds_up_the_refits_plan() -> None:
    # a measured quick run: probe 1,617 images/s, the first trial ended at 2,074 (the baselines were done)
    settings = PlanSettings(**{**QUICK.__dict__, "speed_margin": 0.7, "refit_margin": 0.8})
    start = plan_for(1_460, 1_617, settings)
    after = revise(start, done=1, seconds_left=1_005, images_per_second=2_074, work=work(settings))
    assert after.refit_images_per_second == pytest.approx(0.9 * 2_074)
    assert after.refit_images_per_second > start.refit_images_per_second
    assert (
        after.refit_seconds
        < revise(start, done=1, seconds_left=1_005, images_per_second=1_000, work=work(settings)).refit_seconds
    )


def test_a_probe_that_overrates_the_machine_is_corrected_by_the_first_trial() -> None:
    # a measured standard run: the probe read 4,601 images/s, the first trial (beside the baselines) 1,582
    settings = PlanSettings(min_epochs=20, max_epochs=30, min_members=3, max_members=12, overhead_s=20.0,
                            speed_margin=0.7, refit_margin=0.8)  # fmt: skip
    start = plan_for(6_000, 4_601, settings)
    after = revise(start, done=1, seconds_left=4_970, images_per_second=1_582, work=work(settings))
    assert after.refit_images_per_second == pytest.approx(1_582 * 0.8 / 0.7)  # not the probe's 3,681
    assert after.members < start.members and after.search_seconds + after.refit_seconds <= 4_970


def test_pruned_trials_are_not_members(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a pruner the search goes on until the planned number of members has *completed*."""
    import optuna

    from ensemble.search import planned as search_plan

    now = [1_000.0]
    monkeypatch.setattr(search_plan.time, "time", lambda: now[0])
    two = PlanSettings(**{**QUICK.__dict__, "max_members": 2})
    planned = search_plan.PlannedSearch(plan_for(100_000, 3_000, two), work(two), 1_000.0 + 100_000, lambda s: None)
    study = optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        now[0] += 60.0
        if trial.number % 2 == 0:  # every other trial is pruned early
            raise optuna.TrialPruned()
        trial.set_user_attr("images_per_second", 3_000.0)
        return 0.99

    study.optimize(objective, n_trials=20, callbacks=[planned.callback])
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE", "PRUNED", "COMPLETE"]


def test_trainings_at_once_share_the_search_time() -> None:
    one = plan_for(1_800, 3_000)
    four = make_plan(1_800, images_per_second=3_000, work=work(QUICK, 4))
    assert four.members > one.members and four.parallel == 4 and "(4 at once)" in four.describe()
    assert four.seconds <= 1_800
    again = revise(one, done=1, seconds_left=1_400, images_per_second=3_000, work=work(QUICK, 4))
    alone = revise(one, done=1, seconds_left=1_400, images_per_second=3_000, work=work(QUICK))
    assert again.members > alone.members and again.seconds <= 1_400


def test_only_the_members_the_refit_takes_are_planned_a_refit() -> None:
    capped = PlanSettings(**{**QUICK.__dict__, "max_members": 40, "refit_members": 2})
    every = PlanSettings(**{**QUICK.__dict__, "max_members": 40})
    a, b = plan_for(2_400, 20_000, capped), plan_for(2_400, 20_000, every)
    assert a.members > b.members > 2 and a.seconds <= 2_400
    per_refit = QUICK.max_epochs * N_ALL / 20_000 + QUICK.overhead_s
    assert a.refit_seconds == pytest.approx(2 * per_refit)  # two refits, however many members
    after = revise(a, done=5, seconds_left=1_000, images_per_second=20_000, work=work(capped))
    assert after.refit_seconds == pytest.approx(2 * per_refit)  # owed for the two the refit will take


def test_the_best_preset_plans_many_long_members_at_gpu_speed() -> None:
    from ensemble.pipeline.presets import PRESETS

    best = PRESETS["best"]
    assert best.plan is not None and best.plan.refit_members == best.top_k and best.trials_per_device == "auto"
    # the CNN share of a 7-minute budget, at a speed a small CNN trains at on an H200 (not measured in a run)
    alone = plan_for(360, 150_000, best.plan)
    assert (alone.epochs, alone.members) >= (40, 10) and alone.seconds <= 360
    assert 20 <= best.plan.min_epochs and best.plan.max_epochs <= 40
    four = make_plan(360, images_per_second=150_000, work=work(best.plan, 4))
    assert four.members > alone.members
