"""thaw: transfer learning for image classifiers with the two-phase recipe, measured.

import thaw
result = thaw.fit(thaw.RunConfig(data=thaw.DataConfig(path="hymenoptera")))
print(result.summary.gain)          # what each phase added over the one before
model = thaw.load(result.path)
"""

from thaw.config import DataConfig, ModelConfig, PhaseConfig, RunConfig
from thaw.errors import ThawError
from thaw.results import Metrics, PhaseResult, RunSummary

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
    """Run the config's strategy (or ``plans``); see :func:`thaw.run.fit`. ``strategy="auto"``:
    a search over candidate recipes within ``time_budget``; see :func:`thaw.auto.fit_auto`."""
    if config.strategy == "auto":
        from thaw.auto import fit_auto  # torch and Lightning load on first use: `import thaw` stays light

        return fit_auto(config, sources, quiet, plans)
    from thaw.run import fit as _fit  # torch and Lightning load on first use

    return _fit(config, sources, quiet, plans)


def resume(path, quiet=False):
    """Continue an interrupted run (or ``--strategy auto`` search); see :func:`thaw.run.resume`."""
    from thaw.auto import is_auto, resume_auto  # torch and Lightning load on first use

    if is_auto(path):
        return resume_auto(path, quiet)
    from thaw.run import resume as _resume  # torch and Lightning load on first use

    return _resume(path, quiet)


def evaluate_run(run, data=None, fmt="auto"):
    """Score a run on labelled data, never on its training images; see :func:`thaw.evaluate.evaluate_run`."""
    from thaw.evaluate import evaluate_run  # torch loads on first use

    return evaluate_run(run, data, fmt)


def load(path):
    """A :class:`thaw.predict.Predictor` for a run folder or its ``model.safetensors``."""
    from thaw.predict import Predictor  # torch loads on first use

    return Predictor.load(path)


def __getattr__(name):
    if name == "PhasePlan":  # torch-free, but lives with the strategies
        from thaw.train.strategies import PhasePlan

        return PhasePlan
    raise AttributeError(f"module 'thaw' has no attribute {name!r}")
