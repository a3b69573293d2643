"""A trained classifier as one ``.safetensors`` file that rebuilds itself, with no config and no download.

The file checks itself: its metadata holds ``sha256``, the digest of its tensors (names, types, shapes and
values) AND of every metadata value that changes a prediction (the spec, the class names in order, the
preprocessing, the task, the decision threshold(s) the run chose); every load compares it, so class names
reordered or a threshold edited in the file is refused, whether the file sits in its run folder or was
copied on its own. Each value is then checked against the tensors and for its type and range.

A file written before the digest covered the metadata (it has ``tensors_sha256`` alone) still loads: its
tensors are checked, and :func:`covers_metadata` says its metadata is not, so ``thaw predict`` warns when
no ``summary.json`` (whose ``model_sha256`` is of the whole file) vouches for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing, max_side, number, valid
from thaw.core.results import MULTILABEL, SINGLE_LABEL
from thaw.core.run_folder import MODEL
from thaw.models.build import build_classifier
from thaw.models.contract import Classifier, ModelSpec


def save_model(model: Classifier, path: Path, operating: dict | None = None) -> None:
    """A safetensors file that rebuilds itself: spec, class names, preprocessing and the run's decision
    threshold(s) (``operating``: ``threshold``, ``thresholds``, ``rule``) in the metadata, all under
    its ``sha256``."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "spec": dataclasses.asdict(model.spec),
        "preprocessing": dataclasses.asdict(model.preprocessing),
        "class_names": model.class_names,
        "task": MULTILABEL if model.spec.multilabel else SINGLE_LABEL,
        "operating": _operating(operating),
        "tensors_sha256": tensors_sha256(state),
    }
    meta["sha256"] = content_sha256(meta)
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


COVERED = ("spec", "class_names", "preprocessing", "task", "operating", "tensors_sha256")


def content_sha256(meta: dict) -> str:
    """The model's digest: of its tensors (their own sha256) and of the metadata that changes a
    prediction, as canonical JSON (sorted keys), so that any edit of either changes it."""
    covered = {key: meta.get(key) for key in COVERED}
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def covers_metadata(meta: dict) -> bool:
    """Whether the file's own digest covers its metadata (files written before it did hold only
    ``tensors_sha256``)."""
    return "sha256" in meta


def _operating(operating: dict | None) -> dict | None:
    """What of a run's operating point a prediction uses: the threshold(s) and how they were chosen."""
    if not operating:
        return None
    return {key: operating.get(key) for key in ("threshold", "thresholds", "rule")}


def _short(value, limit: int = 200) -> str:
    """``repr(value)`` cut for a message: a file's metadata can be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _names(names: list, shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{', '.join(str(n) for n in names[:shown])}{more}"


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
        raise ThawError(f"{where}: its class names are not a list of names ({_short(class_names)}); {fix}")
    if len(class_names) != num_classes:
        raise ThawError(
            f"{where}: {len(class_names)} class name(s) ({_names(class_names)}) for a head of "
            f"{num_classes} outputs; {fix}"
        )
    if len(set(class_names)) != len(class_names):
        twice = sorted({c for c in class_names if class_names.count(c) > 1}) if num_classes < 1000 else []
        raise ThawError(f"{where}: its class names repeat ({_names(twice or class_names)}); {fix}")
    if not isinstance(spec.get("multilabel", False), bool):
        task = _short(spec.get("multilabel"))
        raise ThawError(f"{where}: its task (multilabel {task}) is not a yes/no; {fix}")
    if num_classes < 2 and not spec.get("multilabel"):
        raise ThawError(f"{where}: a single-label model needs 2 or more classes, it has 1; {fix}")
    channels = spec.get("in_channels", 3)
    image_size = spec.get("image_size")
    if image_size is not None and not (
        isinstance(image_size, int) and not isinstance(image_size, bool) and 0 < image_size <= max_side(3)
    ):
        raise ThawError(f"{where}: its image size {_short(image_size)} is not a size in pixels; {fix}")
    if not valid(pre, channels):
        raise ThawError(
            f"{where}: its preprocessing ({_short(pre)}) does not fit a {channels}-channel input (a mean "
            f"and a positive std per channel, as numbers; 0 < size <= resize_size <= {max_side(channels)}); "
            f"{fix}"
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
    model.operating, model.metadata_checked = meta.get("operating"), covers_metadata(meta)
    return model.eval()


def check_operating(operating, class_names: list[str], where: str) -> None:
    """The decision threshold(s) a model file carries: a probability, one per label name, or none."""
    if operating is None:
        return

    def probability(v) -> bool:
        return number(v) and 0 <= v <= 1

    given = operating if isinstance(operating, dict) else {}
    threshold, thresholds = given.get("threshold"), given.get("thresholds")
    values = thresholds.values() if isinstance(thresholds, dict) else [-1]
    per_label = thresholds is None or set(thresholds) == set(class_names) and all(map(probability, values))
    ok = (
        isinstance(operating, dict)
        and (threshold is None or probability(threshold))
        and per_label
        and isinstance(given.get("rule") or "", str)
    )
    if not ok:
        raise ThawError(
            f"{where}: its decision threshold ({_short(operating)}) is not a probability (0 to 1) per "
            f"label; restore the file written by `thaw fit`, or train again"
        )


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
    if covers_metadata(meta) and meta["sha256"] != content_sha256(meta):
        raise ThawError(
            f"{path}: its metadata (class names, preprocessing, task or threshold) is not what it was saved "
            f"with (its sha256 differs from the one in the file): it was edited; restore it or train again"
        )
    check_metadata(meta["spec"], class_names, pre, state, str(path))
    check_operating(meta.get("operating"), class_names, str(path))
    task = meta.get("task")
    if task is not None and task != (MULTILABEL if spec.multilabel else SINGLE_LABEL):
        raise ThawError(
            f"{path}: its task {task!r} contradicts its spec (multilabel {spec.multilabel}); "
            f"restore the file written by `thaw fit`, or train again"
        )
    return meta, spec, class_names, pre, state
