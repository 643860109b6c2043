"""Inference: load a built ensemble (hash-checked) and predict; the final refit on every labeled digit."""
