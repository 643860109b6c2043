"""The shipped search spaces (YAML), installed as ``ensemble.search_spaces``; see ``ensemble.space.spaces_dir``."""
