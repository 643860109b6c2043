"""The shipped search spaces (YAML), installed as ``ensemble.search_spaces``.

See ``ensemble.search.spaces.spaces_dir``.
"""
