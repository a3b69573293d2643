"""Training: the engine (``engine.py``: ``run_plans``), one phase (``recipe.py``), the steps that are not
epochs (``steps.py``, ``prefix.py``), the strategies (``strategies.py``), the Lightning module
(``module.py``) and the run folder. Nothing here imports what runs after training (``thaw.use.run``)."""
