"""Search: Optuna studies in the run's storage, their spaces, the budget's plan, and each trial's artifacts.

``search.cnn`` trains Keras CNNs (one process per trial); ``search.baselines`` tunes scikit-learn and
XGBoost families. Study names and trial folders are spelled only in :mod:`ensemble.search.artifacts`."""
