"""The shipped search spaces (YAML), installed as ``ensemble.search_spaces``; see ``ensemble.search.spaces.spaces_dir``."""
