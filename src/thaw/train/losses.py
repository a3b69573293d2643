"""The training loss of a model, chosen in one place: cross-entropy over the classes, or for a
multi-label model (``thaw.metrics.multilabel`` describes the task) binary cross-entropy per label, each
label an independent sigmoid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F


class Loss(Protocol):
    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weight: torch.Tensor | None = None,
        smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> torch.Tensor: ...


def loss_for(model) -> Loss:
    """The loss ``model`` trains with (anything with a ``multilabel`` flag, or the flag itself).
    ``weight``: per class, or per label the positives' weight; ``reduction``: ``mean`` over the images,
    ``none`` (one value per image) or, multi-label, ``label-sum`` (summed over the labels, then the mean
    over the images: one logistic regression per label, as the head solver fits them)."""
    return per_label_bce if getattr(model, "multilabel", model) is True else cross_entropy


def cross_entropy(logits, targets, weight=None, smoothing: float = 0.0, reduction: str = "mean"):
    return F.cross_entropy(
        logits.float(), targets, weight=weight, label_smoothing=smoothing, reduction=_plain(reduction)
    )


def per_label_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy with logits of 0/1 ``targets`` ``[N, K]``, averaged over the labels of each
    image (``label-sum``: summed), then over the images (``none``: one value per image). ``weight``: per
    label, how much a positive counts (``--balance loss``, :func:`pos_weight`); ``smoothing``: targets
    pulled toward 0.5 by that much."""
    y = targets.float()
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    weight = None if weight is None else weight.to(logits.device)
    per_label = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight, reduction="none")
    if reduction == "label-sum":
        return per_label.sum(1).mean()
    per_image = per_label.mean(1)
    return per_image if reduction == "none" else per_image.mean()


def pos_weight(labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """``negatives / positives`` of each label in ``labels`` (the training set): a positive counts as
    much as all the negatives of its label. A label without positives gets 1 (nothing to weigh up)."""
    y = torch.as_tensor(labels, dtype=torch.float64)
    positives = y.sum(0)
    negatives = len(y) - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)).float()


def _plain(reduction: str) -> str:
    return "mean" if reduction == "label-sum" else reduction
