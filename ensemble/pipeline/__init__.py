"""The pipeline: presets, the run's state (log, stages, budget) and the stages of ``ensemble run``, in order."""
