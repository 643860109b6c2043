"""The CNN search: the model and its augmentation, the objective and study, the trainer process."""
