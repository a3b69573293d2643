"""Parameter groups (head vs backbone, no weight decay on norms and biases), optimizer and schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from thaw.models import Classifier


def param_groups(model: Classifier, head_lr: float, backbone_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups over the *trainable* parameters only: a frozen parameter never reaches the optimizer.

    Like timm and fastai, 1-d parameters (biases, norm scales) and tokens get no weight decay.
    """
    groups = []
    for part, module, lr in (("head", model.head, head_lr), ("backbone", model.backbone, backbone_lr)):
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (
                    no_decay
                    if p.ndim <= 1 or name.endswith(("token", "pos_embed", "pos_embedding"))
                    else decay
                ).append(p)
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append({"name": part + suffix, "params": params, "lr": lr, "weight_decay": wd})
    return groups


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, cosine: bool
) -> LambdaLR:
    """Linear warmup to each group's LR, then cosine decay to 0 (or constant when ``cosine`` is False)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
