"""Data: the Kaggle CSVs (load), the demo digits, the run folder (runs) and its train/val/holdout split."""
