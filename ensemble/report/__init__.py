"""ensemble.report.summary."""
