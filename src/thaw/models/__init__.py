"""Pretrained backbones (torchvision, timm, local files) behind one contract; see ``contract.py``."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

import torch
from torch import nn

from thaw.config import ModelConfig
from thaw.errors import ThawError
from thaw.models import timm_zoo, torchvision_zoo
from thaw.models.contract import Classifier, ModelSpec, Preprocessing
from thaw.models.weights import load_into, read_state_dict

__all__ = ["Classifier", "ModelSpec", "Preprocessing", "build_classifier", "load_model", "save_model"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def parse_model_name(name: str) -> tuple[str, str, str | None]:
    """``mobilenet_v2`` -> torchvision; ``timm/convnext_tiny.fb_in1k`` or any timm name -> timm.
    Returns (source, arch, pretrained tag or None)."""
    for prefix in ("timm/", "timm:"):
        if name.startswith(prefix):
            arch, _, tag = name[len(prefix) :].partition(".")
            if not timm_zoo.is_timm(arch):
                raise ThawError(
                    f"unknown timm model {arch!r}{_did_you_mean(arch, timm_zoo.timm.list_models())}"
                )
            return "timm", arch, tag or None
    for prefix in ("torchvision/", "tv/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            if not torchvision_zoo.is_torchvision(name):
                raise ThawError(
                    f"unknown torchvision model {name!r}"
                    f"{_did_you_mean(name, torchvision_zoo.supported_archs())}"
                )
    if torchvision_zoo.is_torchvision(name):
        return "torchvision", name, None
    arch, _, tag = name.partition(".")
    if timm_zoo.is_timm(arch):
        return "timm", arch, tag or None
    known = torchvision_zoo.supported_archs()
    raise ThawError(
        f"unknown model {name!r}{_did_you_mean(name, known + timm_zoo.timm.list_models())}; "
        f"use a torchvision name (e.g. {', '.join(known[:3])}) or timm/<name>"
    )


def build_classifier(
    config: ModelConfig,
    num_classes: int,
    class_names: list[str] | None = None,
    image_size: int | None = None,
) -> Classifier:
    """Build a pretrained backbone with a fresh head for ``num_classes``.

    ``config.weights`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ...), a timm
    pretrained tag, ``none`` (random init), or a path to a local ``.pth`` / ``.safetensors`` file.
    """
    source, arch, tag = parse_model_name(config.name)
    weights = config.weights
    local = is_weights_path(weights)
    if local and not Path(weights).is_file():
        raise ThawError(
            f"--weights {weights}: no such file; give an existing .pth/.safetensors file, "
            f"a weights name such as DEFAULT, or none"
        )
    if source == "torchvision":
        tv_weights = None if local else torchvision_zoo.resolve_weights(arch, weights)
        state = read_state_dict(Path(weights)) if local else None
        backbone, num_features, groups = torchvision_zoo.build(arch, tv_weights, image_size, state)
        preprocessing = torchvision_zoo.preprocessing_of(arch, tv_weights).at_size(image_size)
    else:
        timm_weights = "none" if local else (tag if tag and weights.upper() == "DEFAULT" else weights)
        backbone, num_features, groups = timm_zoo.build(arch, timm_weights, image_size)
        if local:
            load_into(backbone, read_state_dict(Path(weights)), source=weights)
        preprocessing = timm_zoo.preprocessing_of(backbone, image_size)
    in_channels = 3
    if config.in_channels == "sum":
        in_channels = 1
        sum_first_conv(backbone)
        preprocessing = preprocessing.for_channels(1)
    spec = ModelSpec(
        name=config.name,
        source=source,
        arch=arch,
        weights=weights,
        num_classes=num_classes,
        dropout=config.dropout,
        in_channels=in_channels,
        image_size=image_size,
    )
    return Classifier(backbone, num_features, groups, spec, preprocessing, class_names)


def sum_first_conv(backbone: nn.Module) -> None:
    """Make the first RGB convolution take one channel by summing its pretrained filters (fastai)."""
    for parent in backbone.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    1,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    conv.weight.copy_(child.weight.sum(dim=1, keepdim=True))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, child_name, conv)
                return
    raise ThawError("--in-channels sum: this backbone has no 3-channel first convolution; use replicate")


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


def is_weights_path(weights: str) -> bool:
    return weights.lower().endswith(WEIGHT_SUFFIXES) or "/" in weights or Path(weights).exists()


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
