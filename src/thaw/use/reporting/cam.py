"""Class-activation maps for any backbone behind the contract, with ``pytorch-grad-cam`` (``grad-cam``).

Grad-CAM needs a target layer whose output is a spatial map. The layer groups give one generic answer:
the last group whose output is spatial (``[B, C, H, W]``; ``[B, H, W, C]`` in Swin; ``[B, N, D]`` tokens
on a square grid in ViTs) *and* receives a gradient at its spatial positions. The second condition
matters for ViTs: their last block and final norm pass only the class token to the head, so their patch
tokens get no gradient; the map comes from the input of the last block (the output of the block before),
where the last block's attention still carries the gradient to every patch. Both are found by one
forward and backward pass on the image itself, so no family is special-cased.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from thaw.models.contract import Classifier


@dataclass(frozen=True)
class CamTarget:
    """The module Grad-CAM hooks, its layer group, and how its output becomes ``[B, C, H, W]``."""

    name: str
    group: int
    layout: str  # "nchw", "nhwc" or "tokens"
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None


def group_module_names(model: Classifier) -> list[str]:
    """For each layer group, the innermost backbone module holding all of the group's parameters."""
    names = []
    for params in model.layer_groups:
        parts = [p.split(".")[:-1] for p in params]
        prefix = parts[0]
        for other in parts[1:]:
            n = 0
            while n < min(len(prefix), len(other)) and prefix[n] == other[n]:
                n += 1
            prefix = prefix[:n]
        names.append(".".join(prefix))
    return names


def find_target(model: Classifier, image: torch.Tensor) -> CamTarget | None:
    """The last layer group whose output is a spatial map that gets a gradient; None if there is none
    (e.g. a 32 px input leaves a 1x1 map at every late stage)."""
    modules = dict(model.backbone.named_modules())
    names = group_module_names(model)
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, name in enumerate(names):
        if not name or name not in modules:
            continue

        def keep(_module, _inputs, output, index=index):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.retain_grad()
                outputs[index] = output

        handles.append(modules[name].register_forward_hook(keep))
    try:
        with torch.enable_grad():
            logits = model(image[None].requires_grad_(True))
            logits[0, logits[0].argmax()].backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    for index in sorted(outputs, reverse=True):
        out = outputs[index]
        layout = spatial_layout(out)
        if layout is None or out.grad is None:
            continue
        reshape = make_reshape(layout, out.shape)
        grad = reshape(out.grad) if reshape else out.grad
        if grad.shape[-1] * grad.shape[-2] > 1 and float(grad.abs().amax(dim=1).min()) > 0:
            return CamTarget(names[index], index, layout, modules[names[index]], reshape)
    return None


def spatial_layout(x: torch.Tensor) -> str | None:
    if x.ndim == 4:
        if x.shape[2] == x.shape[3]:
            return "nchw" if x.shape[2] > 1 else None
        return "nhwc" if x.shape[1] == x.shape[2] and x.shape[1] > 1 else None
    if x.ndim == 3 and token_grid(x.shape[1]) is not None:
        return "tokens"
    return None


def token_grid(n_tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, grid side) for a ViT's ``n_tokens``: a square grid after at most 8 class /
    register tokens."""
    side = math.isqrt(n_tokens)
    prefix = n_tokens - side * side
    return (prefix, side) if side > 1 and prefix <= 8 else None


def make_reshape(layout: str, shape: torch.Size) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if layout == "nhwc":
        return lambda x: x.permute(0, 3, 1, 2)
    if layout == "tokens":
        prefix, side = token_grid(shape[1])
        return lambda x: x[:, prefix:, :].reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)
    return None


def grad_cam(model: Classifier, images: torch.Tensor, classes: list[int], target: CamTarget) -> np.ndarray:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] at the input's size, each for the class given."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    with GradCAM(model=model, target_layers=[target.module], reshape_transform=target.reshape) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """A uint8 RGB image with the map drawn over it in matplotlib's ``jet`` colours."""
    from matplotlib import colormaps

    rgb = image.astype(np.float32) / 255.0
    coloured = colormaps["jet"](heat)[..., :3]
    return (255 * ((1 - weight) * rgb + weight * coloured)).clip(0, 255).astype(np.uint8)
