"""Training: the two-phase recipe (``recipe.py``), its Lightning module (``module.py``) and run folder."""
