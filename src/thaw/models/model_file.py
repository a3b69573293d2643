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
    bad = non_finite(state)
    if bad:
        raise ThawError(
            f"refusing to save a model with non-finite weights ({', '.join(bad[:3])}); the training "
            f"diverged: lower --lr and run again"
        )
    # one metadata key: safetensors writes a map's keys in random order, and the file's sha256 must not vary
    save_file(state, str(path), metadata={"thaw": json.dumps(meta)})


def non_finite(state: dict) -> list[str]:
    """The names of floating-point tensors in ``state`` that hold NaN or infinity."""
    import torch

    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("thaw")
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ThawError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0] if str(err) else err!r}): "
            f"truncated or not a model; rerun `thaw fit` or restore the file"
        ) from err
    if raw is None:
        raise ThawError(f"{path} is not a thaw model file (no thaw metadata); was it written by `thaw fit`?")
    try:
        meta = json.loads(raw)
        spec = ModelSpec(**meta["spec"])
        class_names, pre = meta["class_names"], meta["preprocessing"]
    except (ValueError, KeyError, TypeError) as err:
        raise ThawError(f"{path}: its thaw metadata is damaged ({err!r}); rerun `thaw fit`") from err
    bad = non_finite(state)
    if bad:
        raise ThawError(
            f"{path} holds non-finite weights (NaN or infinity in {', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}): it cannot predict; train it again"
        )
    config = ModelConfig(
        name=spec.name,
        weights="none",
        dropout=spec.dropout,
        in_channels="sum" if spec.in_channels == 1 else "replicate",
    )
    model = build_classifier(config, spec.num_classes, class_names, spec.image_size, spec.multilabel)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ThawError(f"{path}: its tensors do not fit {spec.name} ({str(err).splitlines()[0]})") from err
    model.spec = spec
    model.preprocessing = Preprocessing(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    return model.eval()
