"""What every model source (torchvision, timm) provides, so nothing above it asks which source it is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing


@dataclass
class Backbone:
    """A headless backbone (images -> pooled features) and what the contract needs to know about it."""

    module: nn.Module
    num_features: int
    layer_groups: list[list[str]]
    preprocessing: Preprocessing


@dataclass
class ImageNetModel:
    """A full model with its 1000-class head, the transform its weights expect, and the class names."""

    model: nn.Module
    transform: Any
    categories: list[str]


@dataclass(frozen=True)
class ZooEntry:
    """One row of ``thaw models``."""

    name: str  # what --model takes
    family: str
    source: str  # torchvision | timm
    params: int
    gflops: float | None  # at 224x224, multiply-adds
    top1: float | None  # ImageNet-1k, of ``weights``
    top5: float | None
    input_size: int  # the weights' own input size
    weights: str  # the pretrained weights the row describes (the ones here offline, if any)
    file_mb: float | None  # size of the weights file
    offline: bool  # the weights load on this machine now, without a download

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Counts(Protocol):
    def get(self, source: str, arch: str) -> tuple[int, float]: ...


class Adapter(Protocol):
    """One model source behind the contract. ``arch`` is the source's own architecture name."""

    source: str  # "torchvision", "timm": the ``ModelSpec.source`` it builds
    prefixes: tuple[str, ...]  # explicit name prefixes, e.g. ``timm/``; the first is the canonical one
    installed_is_default: bool  # an imported file is used for ``--weights DEFAULT`` (else: give its path)

    def parse(self, name: str) -> tuple[str, str | None]:
        """A model name without its prefix -> (arch, pretrained tag or None)."""

    def knows(self, arch: str) -> bool:
        """The source has this architecture (supported or not)."""

    def known_archs(self) -> list[str]:
        """Names to suggest for a misspelt one."""

    def model_name(self, arch: str) -> str:
        """What ``--model`` takes for ``arch``."""

    def build(
        self, arch: str, tag: str | None, weights: str, image_size: int | None, local: bool
    ) -> Backbone:
        """The headless backbone with ``weights`` (a weights name, ``none``, or when ``local`` an existing
        file, loaded strictly), at ``image_size`` where the architecture needs one size."""

    def no_weight_decay(self, arch: str, backbone: nn.Module) -> frozenset[str]:
        """Backbone parameter names that get no weight decay besides the 1-d ones (tokens, position
        embeddings), as named by ``backbone.named_parameters()``."""

    def takes_img_size(self, arch: str) -> bool:
        """Built for one input size (ViT-style position embeddings): rebuilt for another."""

    def headless(self, arch: str) -> tuple[nn.Module, tuple[str, ...]]:
        """The randomly initialised architecture without its classifier, and the classifier's key prefixes
        in a full state dict (``thaw weights import``)."""

    def full_model(self, arch: str, image_size: int | None = None) -> nn.Module:
        """The randomly initialised architecture with its ImageNet classifier (conversion templates,
        counting parameters and FLOPs)."""

    def imagenet_classifier(self, arch: str, model: nn.Module) -> nn.Module:
        """The part of ``imagenet_model``'s full model that maps pooled features to its 1000 logits."""

    def imagenet_model(
        self, arch: str, tag: str | None, weights: str | None
    ) -> tuple[ImageNetModel | None, str, str]:
        """For ``thaw weights verify``: the full model with ``weights`` (``None``: what is here offline) and
        its ImageNet head, or None when the weights have no such head; a description of the weights; and
        the ``--weights`` value that builds the same backbone."""

    def catalogue(self) -> dict[str, str]:
        """The architectures ``thaw models`` lists, with their family."""

    def zoo_entry(self, arch: str, family: str, counts: Counts) -> ZooEntry:
        """The row of ``thaw models`` for ``arch``."""


def existing_file(weights: str) -> Path:
    if not Path(weights).is_file():
        raise ThawError(f"--weights {weights}: no such file; give a .pth/.safetensors file or a weights name")
    return Path(weights)
