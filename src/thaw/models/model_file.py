"""A trained classifier as one ``.safetensors`` file that rebuilds itself, with no config and no download."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from thaw.config import ModelConfig
from thaw.errors import ThawError
from thaw.models.build import build_classifier
from thaw.models.contract import Classifier, ModelSpec
from thaw.preprocessing import Preprocessing


def save_model(model: Classifier, path: Path) -> None:
    """A safetensors file that rebuilds itself: spec, class names and preprocessing in the metadata."""
    from safetensors.torch import save_file

    meta = {
        "spec": dataclasses.asdict(model.spec),
        "preprocessing": dataclasses.asdict(model.preprocessing),
        "class_names": model.class_names,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"thaw": json.dumps(meta), "format": "pt"})


def load_model(path: str | Path) -> Classifier:
    """Load a model saved by :func:`save_model`, with no original config and no download."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ThawError(
            f"no model file at {path}; give a run folder made by `thaw fit` or its model.safetensors"
        )
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("thaw")
    if raw is None:
        raise ThawError(f"{path} is not a thaw model file (no thaw metadata); was it written by `thaw fit`?")
    meta = json.loads(raw)
    spec = ModelSpec(**meta["spec"])
    config = ModelConfig(
        name=spec.name,
        weights="none",
        dropout=spec.dropout,
        in_channels="sum" if spec.in_channels == 1 else "replicate",
    )
    model = build_classifier(config, spec.num_classes, meta["class_names"], spec.image_size)
    model.load_state_dict(load_file(str(path)))
    model.spec = spec
    pre = meta["preprocessing"]
    model.preprocessing = Preprocessing(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    return model.eval()
