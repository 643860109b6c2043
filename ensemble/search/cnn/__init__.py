"""ensemble.search.cnn.study.cnn."""
