"""The torch-free core: settings, result records, plans as data, the run folder, atomic files, the one cache
entry and what a run prints. Nothing here imports torch (``tests/test_imports.py`` checks it)."""
