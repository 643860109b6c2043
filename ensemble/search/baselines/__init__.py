"""ensemble.search.cnn.study.baselines."""
