"""ensemble.combine."""
