"""ensemble.inference."""
