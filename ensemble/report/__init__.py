"""Report: every model scored on the holdout, significance, plots, html/md/csv, and the checked submission."""
