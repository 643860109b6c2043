"""ensemble.search.cnn.study."""
