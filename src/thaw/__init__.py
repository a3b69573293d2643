"""thaw: transfer learning for image classifiers with the two-phase recipe, measured.

import thaw
result = thaw.fit(thaw.RunConfig(data=thaw.DataConfig(path="hymenoptera")))
print(result.summary.gain)          # what each phase added over the one before
model = thaw.load(result.path)
"""

from thaw.core.config import DataConfig, ModelConfig, PhaseConfig, RunConfig
from thaw.core.errors import ThawError
from thaw.core.results import Metrics, PhaseResult, RunSummary

__version__ = "0.1.0"
__all__ = [
    "DataConfig",
    "Metrics",
    "ModelConfig",
    "PhaseConfig",
    "PhasePlan",
    "PhaseResult",
    "RunConfig",
    "RunSummary",
    "ThawError",
    "evaluate_run",
    "fit",
    "load",
    "resume",
    "__version__",
]


def fit(config, sources=None, quiet=False, plans=None):
    """Run the config's strategy (or ``plans``); see :func:`thaw.use.run.fit`. ``strategy="auto"``:
    a search over candidate recipes within ``time_budget``; see :func:`thaw.studies.auto.fit_auto`."""
    if config.strategy == "auto":
        from thaw.studies.auto import (
            fit_auto,  # torch and Lightning load on first use: `import thaw` stays light
        )

        return fit_auto(config, sources, quiet, plans)
    from thaw.use.run import fit as _fit  # torch and Lightning load on first use

    return _fit(config, sources, quiet, plans)


def resume(path, quiet=False):
    """Continue an interrupted run (or ``--strategy auto`` search); see :func:`thaw.use.run.resume`."""
    from thaw.studies.auto import is_auto, resume_auto  # torch and Lightning load on first use

    if is_auto(path):
        return resume_auto(path, quiet)
    from thaw.use.run import resume as _resume  # torch and Lightning load on first use

    return _resume(path, quiet)


def evaluate_run(run, data=None, fmt="auto"):
    """Score a run on labelled data, never on its training images; see
    :func:`thaw.use.evaluate.evaluate_run`."""
    from thaw.use.evaluate import evaluate_run  # torch loads on first use

    return evaluate_run(run, data, fmt)


def load(path):
    """A :class:`thaw.use.predictor.Predictor` for a run folder or its ``model.safetensors``."""
    from thaw.use.predictor import Predictor  # torch loads on first use

    return Predictor.load(path)


def __getattr__(name):
    if name == "PhasePlan":  # torch-free, but lives with the strategies
        from thaw.core.strategies import PhasePlan

        return PhasePlan
    raise AttributeError(f"module 'thaw' has no attribute {name!r}")
