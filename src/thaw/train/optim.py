"""Parameter groups (the head, then one per backbone layer group, each at its own LR; no weight decay on
norms, biases and tokens), and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from thaw.models import Classifier
from thaw.train.adapters import plain_name


def param_groups(
    model: Classifier, head_lr: float, group_lrs: list[float], weight_decay: float, other_lr: float
) -> list[dict]:
    """AdamW groups over the *trainable* parameters only: a frozen parameter never reaches the optimizer.

    The head trains at ``head_lr``, backbone layer group ``g`` at ``group_lrs[g]``. A parameter that
    trains although its group is frozen (batch-norm affine parameters under the ``fastai`` policy)
    trains at ``other_lr``. Like timm and fastai, 1-d parameters (biases, norm scales) and the
    backbone's own no-weight-decay parameters (position embeddings, class tokens) get no weight decay.
    An adapter's parameters (``thaw.train.adapters``) train in the group of the weight they adapt; a
    LoRA factor is 2-d and gets weight decay, an SSF scale or shift (1-d) none.
    """
    place = {name: (g, i) for g, names in enumerate(model.layer_groups) for i, name in enumerate(names)}
    by_group: list[list[tuple[str, torch.nn.Parameter]]] = [[] for _ in model.layer_groups]
    # in layer-group order (a plain model's optimizer state keeps its layout); an adapter's parameters join
    # the group of the weight they adapt, after it
    for name, p in sorted(model.backbone.named_parameters(), key=lambda item: place[plain_name(item[0])]):
        by_group[place[plain_name(name)][0]].append((plain_name(name), p))
    parts: list[tuple[str, float, list[tuple[str, torch.nn.Parameter]]]] = [
        ("head", head_lr, [(f"head.{n}", p) for n, p in model.head.named_parameters()])
    ]
    for g, named in enumerate(by_group):
        parts.append((f"group{g}", group_lrs[g] or other_lr, named))
    groups = []
    for part, lr, named in parts:
        decay, no_decay = [], []
        for name, p in named:
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name in model.no_weight_decay else decay).append(p)
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append({"name": part + suffix, "params": params, "lr": lr, "weight_decay": wd})
    return groups


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    cosine: bool,
    head_warmup_steps: int = 0,
) -> LambdaLR:
    """Linear warmup to each group's LR, then cosine decay to 0 (or constant when ``cosine`` is False).
    ``head_warmup_steps``: the head's groups ramp over this many steps instead (never above the others'
    factor, so a head warmup shorter than ``warmup_steps`` is ``warmup_steps``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def head_factor(step: int) -> float:
        if step < head_warmup_steps:
            return min((step + 1) / head_warmup_steps, factor(step))
        return factor(step)

    if head_warmup_steps <= warmup_steps:
        return LambdaLR(optimizer, factor)
    return LambdaLR(
        optimizer, [head_factor if g["name"].startswith("head") else factor for g in optimizer.param_groups]
    )
