"""Probabilities over a loader, in eval mode: how the engine scores a phase, and what evaluation reuses."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from thaw.models import Classifier


@torch.no_grad()
def probabilities(model: Classifier, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, C] and labels [N] over a loader, in eval mode (multi-label: per-label
    probabilities and 0/1 labels, both [N, K])."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for x, y in loader:
        probs.append(model.probabilities(model(x.to(device))).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)
