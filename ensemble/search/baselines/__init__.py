"""The classical baselines: model families, deskew preprocessing, their studies and the parallel runner."""
