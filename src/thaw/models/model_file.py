"""A trained classifier as one ``.safetensors`` file that rebuilds itself, with no config and no download.

The file checks itself: its metadata holds the sha256 of its tensors (names, types, shapes and values), and
every load compares it, and checks the class names, the task and the preprocessing against the tensors,
whether the file sits in its run folder or was copied on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.core.results import MULTILABEL, SINGLE_LABEL
from thaw.core.run_folder import MODEL
from thaw.models.build import build_classifier
from thaw.models.contract import Classifier, ModelSpec


def save_model(model: Classifier, path: Path) -> None:
    """A safetensors file that rebuilds itself: spec, class names and preprocessing in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "spec": dataclasses.asdict(model.spec),
        "preprocessing": dataclasses.asdict(model.preprocessing),
        "class_names": model.class_names,
        "task": MULTILABEL if model.spec.multilabel else SINGLE_LABEL,
        "tensors_sha256": tensors_sha256(state),
    }
    check_metadata(meta["spec"], meta["class_names"], meta["preprocessing"], state, "the model")
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


def tensors_sha256(state: dict) -> str:
    """The sha256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(state[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


HEAD_WEIGHT = "head.1.weight"  # the linear head of every Classifier: [outputs, features]


def check_metadata(spec: dict, class_names, pre: dict, state: dict, where: str) -> None:
    """The metadata must describe the tensors: as many unique class names as the head has outputs, a task
    the outputs can mean, and preprocessing with one mean and std per input channel."""
    fix = "restore the file written by `thaw fit`, or train again"
    outputs = state[HEAD_WEIGHT].shape[0] if HEAD_WEIGHT in state else None
    num_classes = spec.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ThawError(f"{where}: its metadata gives {num_classes!r} classes, not a count; {fix}")
    if outputs is not None and outputs != num_classes:
        raise ThawError(f"{where}: its head has {outputs} outputs but its metadata says {num_classes}; {fix}")
    if not isinstance(class_names, list) or not all(isinstance(c, str) and c for c in class_names):
        raise ThawError(f"{where}: its class names are not a list of names ({class_names!r}); {fix}")
    if len(class_names) != num_classes:
        raise ThawError(
            f"{where}: {len(class_names)} class name(s) ({', '.join(class_names[:5])}) for a head of "
            f"{num_classes} outputs; {fix}"
        )
    if len(set(class_names)) != len(class_names):
        raise ThawError(f"{where}: its class names repeat ({', '.join(class_names)}); {fix}")
    if not isinstance(spec.get("multilabel", False), bool):
        raise ThawError(f"{where}: its task (multilabel {spec.get('multilabel')!r}) is not a yes/no; {fix}")
    if num_classes < 2 and not spec.get("multilabel"):
        raise ThawError(f"{where}: a single-label model needs 2 or more classes, it has 1; {fix}")
    channels = spec.get("in_channels", 3)
    try:
        mean, std = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
        size, resize = pre["size"], pre["resize_size"]
        ok = (
            len(mean) == len(std) == channels
            and all(math.isfinite(v) for v in mean + std)
            and all(v > 0 for v in std)
            and isinstance(size, int)
            and isinstance(resize, int)
            and 0 < size <= resize
            and pre.get("interpolation", "bilinear") in ("bilinear", "bicubic", "nearest")
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ThawError(
            f"{where}: its preprocessing ({pre!r}) does not fit a {channels}-channel input "
            f"(a mean and a positive std per channel, 0 < size <= resize_size); {fix}"
        )


def load_model(path: str | Path) -> Classifier:
    """Load a model saved by :func:`save_model`, with no original config and no download."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL
    if not path.is_file():
        raise ThawError(
            f"no model file at {path}; give a run folder made by `thaw fit` or its model.safetensors"
        )
    meta, spec, class_names, pre, state = _read_checked(path)
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


def _read_checked(path: Path):
    """A model file's metadata, spec, class names, preprocessing and tensors, each check passed: readable,
    thaw's, undamaged metadata, finite weights, the tensors it was saved with, a task its spec agrees with."""
    from safetensors import safe_open
    from safetensors.torch import load_file

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
    recorded = meta.get("tensors_sha256")
    if recorded is not None and recorded != tensors_sha256(state):
        raise ThawError(
            f"{path}: its tensors are not the ones it was saved with (their sha256 differs from the one "
            f"in its own metadata): the file was changed or damaged; restore it or train again"
        )
    check_metadata(meta["spec"], class_names, pre, state, str(path))
    task = meta.get("task")
    if task is not None and task != (MULTILABEL if spec.multilabel else SINGLE_LABEL):
        raise ThawError(
            f"{path}: its task {task!r} contradicts its spec (multilabel {spec.multilabel}); "
            f"restore the file written by `thaw fit`, or train again"
        )
    return meta, spec, class_names, pre, state
