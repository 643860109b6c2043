"""The CNN search stage's deadline pruner: a CNN trial stops once it would end past the search deadline."""

from __future__ import annotations

import time

import optuna

from ensemble.pipeline.cnn_stage import deadline_pruner


def run_trials(deadline: float, epoch_s: float, epochs: int = 4) -> optuna.Study:
    said: list[str] = []
    pruner = deadline_pruner(optuna.pruners.NopPruner(), deadline, epochs, said.append)
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("epochs", epochs)
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            trial.report(0.9, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.9

    study.optimize(objective, n_trials=3)
    return study


def test_trials_run_while_the_deadline_is_far() -> None:
    study = run_trials(time.time() + 3600, 0.0)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_a_trial_that_would_end_late_is_pruned_once_a_model_exists() -> None:
    # 4 epochs of 0.2 s: the first trial ends at 0.8 s (no model yet: only a passed deadline would stop
    # it); after one epoch the second projects its end at 1.6 s, past the deadline at 1.2 s
    study = run_trials(time.time() + 1.2, 0.2)
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.COMPLETE
    assert states[1] == optuna.trial.TrialState.PRUNED and len(states) == 2  # and the study stopped
