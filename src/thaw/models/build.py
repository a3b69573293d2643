"""From a model name to a :class:`Classifier`: the source's adapter builds the backbone, thaw the head."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.models.adapters import ADAPTERS, adapter_for, strip_prefix
from thaw.models.contract import Classifier, ModelSpec
from thaw.models.state_dict import is_weights_path


def parse_model_name(name: str) -> tuple[str, str, str | None]:
    """``mobilenet_v2`` -> torchvision; ``timm/convnext_tiny.fb_in1k`` or any timm name -> timm.
    Returns (source, arch, pretrained tag or None)."""
    adapter, rest = strip_prefix(name)
    if adapter is not None:
        arch, tag = adapter.parse(rest)
        if not adapter.knows(arch):
            raise ThawError(
                f"unknown {adapter.source} model {arch!r}{_did_you_mean(arch, adapter.known_archs())}"
            )
        return adapter.source, arch, tag
    for adapter in ADAPTERS.values():
        arch, tag = adapter.parse(name)
        if adapter.knows(arch):
            return adapter.source, arch, tag
    first, *others = ADAPTERS.values()
    known = [a for adapter in ADAPTERS.values() for a in adapter.known_archs()]
    examples = ", ".join(first.known_archs()[:3])
    explicit = " or ".join(f"{adapter.prefixes[0]}<name>" for adapter in others)
    raise ThawError(
        f"unknown model {name!r}{_did_you_mean(name, known)}; "
        f"use a {first.source} name (e.g. {examples}) or {explicit}"
    )


def build_classifier(
    config: ModelConfig,
    num_classes: int,
    class_names: list[str] | None = None,
    image_size: int | None = None,
    multilabel: bool = False,
) -> Classifier:
    """Build a pretrained backbone with a fresh head for ``num_classes`` (``multilabel``: one independent
    output per label, read through a sigmoid).

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
    adapter = adapter_for(source)
    built = adapter.build(arch, tag, weights, image_size, local)
    backbone, preprocessing = built.module, built.preprocessing
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
        multilabel=multilabel,
    )
    return Classifier(
        backbone,
        built.num_features,
        built.layer_groups,
        spec,
        preprocessing,
        class_names,
        no_weight_decay=adapter.no_weight_decay(arch, backbone),
    )


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


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
