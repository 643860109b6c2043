"""ensemble.pipeline.run."""
