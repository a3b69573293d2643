"""thaw: transfer learning for image classifiers with the two-phase recipe, measured.

import thaw
result = thaw.fit("hymenoptera/", phase2_epochs=3)   # the settings are thaw fit's flags
print(result.summary.gain)                          # what each phase added over the one before
table = thaw.load(result.path).predict(["bee.jpg"])  # a pandas DataFrame
"""

from pathlib import Path

from thaw.core.config import DataConfig, ModelConfig, PhaseConfig, RunConfig, from_keywords
from thaw.core.errors import ThawError
from thaw.core.results import Metrics, PhaseResult, RunSummary
from thaw.version import __version__

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
    "configure",
    "evaluate_run",
    "fit",
    "load",
    "resume",
    "__version__",
]


def configure(data=None, base=None, **settings) -> RunConfig:
    """The resolved config of ``thaw.fit(data, **settings)``, without running it: the defaults (or
    ``base``), the images in ``data``, each keyword a setting named as ``thaw fit``'s flag
    (``phase2_epochs=3`` is ``--phase2-epochs 3``), validated as the flags are."""
    return from_keywords(base if base is not None else RunConfig(), data, **settings)


def fit(config=None, sources=None, quiet=False, plans=None, **settings):
    """Fine-tune on a folder of images with the two-phase recipe and write a run folder::

        thaw.fit("folder/", model="mobilenet_v2", phase2_epochs=3, strategy="lp-ft")

    ``config``: the images (a folder, a .csv, an .npz, ``builtin:digits``) or a :class:`RunConfig`;
    each keyword in ``settings`` is a setting named as ``thaw fit``'s flag without the dashes
    (:func:`thaw.configure` resolves them, as the command line does). ``plans``: :class:`PhasePlan` s to run
    instead of the strategy's. See :func:`thaw.use.run.fit`; ``strategy="auto"``: a search over candidate
    recipes within ``time_budget`` (:func:`thaw.studies.auto.fit_auto`)."""
    if isinstance(config, str | Path) or config is None:
        config = configure(config, **settings)
    elif settings:
        config = from_keywords(config, **settings)
    if not isinstance(config, RunConfig):
        raise ThawError(
            f"thaw.fit takes the images (a folder, .csv, .npz) or a RunConfig, not {type(config).__name__}"
        )
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
    """A :class:`thaw.use.predictor.Predictor` for a run folder or its ``model.safetensors``:
    ``thaw.load(run).predict(["a.jpg", "folder/"])`` is a pandas DataFrame (path, prediction, confidence,
    p_<class>..., error). It refuses a model whose ``MODEL_CARD.md`` describes another file."""
    from thaw.use.predictor import Predictor  # torch loads on first use

    return Predictor.load(path)


def __getattr__(name):
    if name == "PhasePlan":  # torch-free, but lives with the strategies
        from thaw.core.strategies import PhasePlan

        return PhasePlan
    raise AttributeError(f"module 'thaw' has no attribute {name!r}")
