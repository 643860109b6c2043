"""Combine: candidate trials -> TTA views -> soft-voting weights -> a self-contained ensemble folder (manifest)."""
