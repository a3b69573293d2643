"""One contract for every backbone, torchvision or timm.

A :class:`Classifier` is ``head(backbone(x))``: the backbone maps images to pooled features ``[B, D]``,
the head maps features to logits. ``layer_groups`` lists the backbone's parameter names in ordered
groups from input to output (stem, stages, final norm); together they hold every backbone parameter
exactly once. Freezing, unfreezing the last N groups, layer-wise learning rates and (later) caching
features all work on this contract and never special-case a family.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from thaw.core.preprocessing import Preprocessing

__all__ = ["Classifier", "ModelSpec", "Preprocessing", "group_by_patterns", "new_head", "norm_kind"]


@dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the architecture without the original config or a download."""

    name: str
    source: str
    arch: str
    weights: str
    num_classes: int
    dropout: float = 0.0
    in_channels: int = 3
    image_size: int | None = None
    multilabel: bool = False  # one sigmoid per label (``thaw.metrics.multilabel``), no softmax


class Classifier(nn.Module):
    """``head(backbone(x))`` with ordered layer groups over the backbone's parameters."""

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        layer_groups: list[list[str]],
        spec: ModelSpec,
        preprocessing: Preprocessing,
        class_names: list[str] | None = None,
        no_weight_decay: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = new_head(num_features, spec.num_classes, spec.dropout)
        self.layer_groups = layer_groups
        self.spec = spec
        self.preprocessing = preprocessing
        self.class_names = list(class_names or [str(i) for i in range(spec.num_classes)])
        # a loaded model file's decision threshold(s) and whether its own digest covers its metadata
        self.operating: dict | None = None
        self.metadata_checked = True
        self.norm_kind = norm_kind(backbone)
        # backbone parameter names (as in ``backbone.named_parameters()``) that get no weight decay besides
        # the 1-d ones: position embeddings and tokens, as the backbone's own source declares them
        self.no_weight_decay = frozenset(no_weight_decay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def multilabel(self) -> bool:
        return self.spec.multilabel

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-label sigmoids for a multi-label model, else the softmax over the classes."""
        return logits.float().sigmoid() if self.spec.multilabel else logits.float().softmax(dim=1)

    def group_parameters(self, groups: Iterable[int]) -> list[nn.Parameter]:
        params = dict(self.backbone.named_parameters())
        return [params[name] for g in groups for name in self.layer_groups[g]]

    def group_modules(self, groups: Iterable[int]) -> list[nn.Module]:
        """Modules whose own parameters all lie in the given groups (used for the batch-norm policy)."""
        names = {name for g in groups for name in self.layer_groups[g]}
        found = []
        for mod_name, module in self.backbone.named_modules():
            own = [f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)]
            if own and all(n in names for n in own):
                found.append(module)
        return found


def new_head(num_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """A fresh linear head, zero-initialised (BiT): the first logits are uniform, the first gradients
    small and the same for every seed, so phase 1 starts from a well-defined point."""
    linear = nn.Linear(num_features, num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.Dropout(dropout), linear)


def group_by_patterns(backbone: nn.Module, patterns: list[str]) -> list[list[str]]:
    """Ordered layer groups from regexes, first to last. A pattern with a capture group (``layer(\\d+)``)
    makes one group per captured number; every parameter must match some pattern."""
    keyed: dict[tuple[int, int], list[str]] = {}
    for name, _ in backbone.named_parameters():
        for index, pattern in enumerate(patterns):
            match = re.match(pattern, name)
            if match:
                ordinal = int(match.group(1)) if match.groups() and match.group(1) is not None else 0
                keyed.setdefault((index, ordinal), []).append(name)
                break
        else:
            raise AssertionError(f"parameter {name} matches no layer-group pattern {patterns}")
    return [keyed[key] for key in sorted(keyed)]


def norm_kind(module: nn.Module) -> str:
    kinds = []
    for m in module.modules():
        kind = (
            "batchnorm"
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            else "layernorm"
            if isinstance(m, nn.LayerNorm) or type(m).__name__.startswith("LayerNorm")
            else "groupnorm"
            if isinstance(m, nn.GroupNorm)
            else None
        )
        if kind and kind not in kinds:
            kinds.append(kind)
    return "+".join(kinds) or "none"
