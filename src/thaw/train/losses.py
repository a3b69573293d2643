"""The training loss of a model, chosen in one place: cross-entropy over the classes, or for a
multi-label model binary cross-entropy per label (``thaw.train.multilabel.loss``)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from thaw.train import multilabel


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


def per_label_bce(logits, targets, weight=None, smoothing: float = 0.0, reduction: str = "mean"):
    if reduction != "label-sum":
        return multilabel.loss(logits, targets, weight, smoothing, reduction=reduction)
    y = targets.float()
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    per_label = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight, reduction="none")
    return per_label.sum(1).mean()


def _plain(reduction: str) -> str:
    return "mean" if reduction == "label-sum" else reduction
