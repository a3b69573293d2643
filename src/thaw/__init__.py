"""thaw: transfer learning for image classifiers with the two-phase recipe, measured.

import thaw
result = thaw.fit(thaw.RunConfig(data=thaw.DataConfig(path="hymenoptera")))
model = thaw.load(result.path)
"""

from thaw.config import DataConfig, ModelConfig, PhaseConfig, RunConfig
from thaw.errors import ThawError

__version__ = "0.1.0"
__all__ = ["DataConfig", "ModelConfig", "PhaseConfig", "RunConfig", "ThawError", "fit", "load", "__version__"]


def fit(config, sources=None, quiet=False):
    """Run the two-phase recipe; see :func:`thaw.train.recipe.fit`."""
    from thaw.train.recipe import fit as _fit

    return _fit(config, sources, quiet)


def load(path):
    """A :class:`thaw.predict.Predictor` for a run folder or its ``model.safetensors``."""
    from thaw.predict import Predictor

    return Predictor.load(path)
