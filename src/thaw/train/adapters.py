"""Phase 2 that moves fewer weights (``PhasePlan.trainable``): which parameters of the trainable layer
groups train (all, biases, norms), and the adapters that train instead of them (LoRA, SSF), attached to
the backbone before a plan and merged into its weights after it, so the model saved is a plain one.

LoRA and SSF are written here on PyTorch's own reparametrization API (``torch.nn.utils.parametrize``)
rather than taken from the ``peft`` library, because:

- ``peft`` brings ``transformers``, ``tokenizers``, ``accelerate`` and ``pydantic`` (15 packages) for the
  40 lines below; SSF is not in ``peft`` at all, and the same mechanism serves both here;
- a parametrization wraps a layer's ``weight`` in place: the layer stays a ``Conv2d`` or ``Linear`` of
  its family (torchvision's or timm's forward is untouched), and ``remove_parametrizations(...,
  leave_parametrized=True)`` is the merge, which leaves the original parameter (its name, its object) with
  the merged value, so the state dict has exactly the keys of the model before the plan.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn.utils import parametrize

from thaw.models import Classifier

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def is_norm(module: nn.Module) -> bool:
    """A batch, layer or group norm (timm's ``LayerNorm2d`` and friends subclass ``nn.LayerNorm``)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.startswith(("LayerNorm", "RMSNorm"))


def chosen_parameters(model: Classifier, groups: list[int], trainable: str) -> list[nn.Parameter]:
    """The backbone parameters of ``groups`` that train for ``trainable`` (``all``, ``bias``, ``norm``);
    none for the adapters (``lora``, ``ssf``), which train beside frozen weights."""
    if trainable == "all":
        return model.group_parameters(groups)
    if trainable == "bias":
        params = dict(model.backbone.named_parameters())
        return [params[n] for g in groups for n in model.layer_groups[g] if n.rsplit(".", 1)[-1] == "bias"]
    if trainable == "norm":
        return [p for m in model.group_modules(groups) if is_norm(m) for p in m.parameters(recurse=False)]
    return []


class LoRA(nn.Module):
    """``W + (up @ down).view_as(W)``: a rank-``rank`` update of a weight seen as an ``out x fan_in``
    matrix (a convolution's kernel flattened, as ``peft``'s conv LoRA does). ``up`` starts at zero, so the
    layer starts as it was; ``down`` is drawn like ``peft``'s (Kaiming-uniform, a = sqrt(5)). Scale 1
    (``lora_alpha`` = rank)."""

    def __init__(self, shape: torch.Size, rank: int, generator: torch.Generator):
        super().__init__()
        fan_in = math.prod(shape[1:])
        self.down = nn.Parameter(torch.empty(rank, fan_in))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.up = nn.Parameter(torch.zeros(shape[0], rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.up @ self.down).view_as(weight)


class Scale(nn.Module):
    """SSF's scale (and shift) of one layer's output channels, as a parametrization of its ``weight``:
    ``scale * W`` row by row."""

    def __init__(self, channels: int, shift: bool):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels)) if shift else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scale.view(-1, *[1] * (weight.dim() - 1)) * weight


class Shift(nn.Module):
    """SSF on a layer's ``bias``: ``scale * b + shift``, with the scale and shift its weight's
    :class:`Scale` holds (referenced, not registered: one copy of each in the state dict)."""

    def __init__(self, scale: Scale):
        super().__init__()
        self.__dict__["owner"] = scale  # not a submodule: its parameters belong to the weight's Scale

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return self.owner.scale * bias + self.owner.shift


def lora_fits(module: nn.Module, rank: int) -> bool:
    """A linear layer or an ungrouped convolution where a rank-``rank`` update has fewer parameters than the
    weight. Not a grouped (depthwise) convolution: its flattened kernel is ``C x 9``, rank <= 9 already."""
    if not isinstance(module, nn.Conv2d | nn.Linear) or getattr(module, "groups", 1) != 1:
        return False
    out, fan_in = module.weight.shape[0], math.prod(module.weight.shape[1:])
    return rank * (out + fan_in) < out * fan_in


def ssf_fits(module: nn.Module) -> bool:
    """A convolution, linear layer or norm with a per-channel weight. A layer without bias gets the scale
    alone: its shift would be the next norm's."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Conv2d | nn.Linear) or is_norm(module)) and isinstance(weight, nn.Parameter)


def attach(model: Classifier, groups: list[int], trainable: str, rank: int, seed: int) -> int:
    """Adapters on the backbone modules of ``groups`` for ``trainable`` ``lora`` or ``ssf`` (nothing for the
    others); returns how many layers got one. The LoRA draws come from ``seed`` alone."""
    if trainable not in ("lora", "ssf"):
        return 0
    generator = torch.Generator().manual_seed(seed)
    fits = (lambda m: lora_fits(m, rank)) if trainable == "lora" else ssf_fits
    chosen = [m for m in model.group_modules(groups) if fits(m)]
    for module in chosen:
        weight = module.weight
        if trainable == "lora":
            adapter = LoRA(weight.shape, rank, generator).to(weight.device, weight.dtype)
            parametrize.register_parametrization(module, "weight", adapter)
            continue
        bias = getattr(module, "bias", None)
        scale = Scale(weight.shape[0], shift=isinstance(bias, nn.Parameter)).to(weight.device, weight.dtype)
        parametrize.register_parametrization(module, "weight", scale)
        if scale.shift is not None:
            parametrize.register_parametrization(module, "bias", Shift(scale))
    return len(chosen)


def merge(model: nn.Module) -> None:
    """Every adapter folded into the weights it adapts (``W + up @ down``; ``scale * W``, ``scale * b +
    shift``): the model is a plain one again, with the keys it had before :func:`attach`."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


_PARAMETRIZED = re.compile(r"^(.*?)\.?parametrizations\.([^.]+)\.(original|\d+\..+)$")


def plain_name(name: str) -> str:
    """The name a parameter of a parametrized module has in the plain model: the weight itself
    (``conv.parametrizations.weight.original`` -> ``conv.weight``), or the weight an adapter's parameter
    belongs to (``conv.parametrizations.weight.0.down`` -> ``conv.weight``), so that it falls in that
    weight's layer group."""
    match = _PARAMETRIZED.match(name)
    if not match:
        return name
    module, tensor = match.group(1), match.group(2)
    return f"{module}.{tensor}" if module else tensor
