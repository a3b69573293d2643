"""Multi-label classification: several findings per image (MedMNIST's ChestMNIST, a CSV with one 0/1
column per label). The model has one output per label, each an independent sigmoid trained with binary
cross-entropy; the probabilities of an image need not sum to 1.

Targets are 0/1 integer tensors ``[N, K]``; probabilities ``[N, K]``. Each label is a binary task of its
own: its AUC, and a decision threshold chosen on validation as ``thaw.use.operating_point`` chooses a binary
one (Youden's J, or ``--target-sensitivity``). The headline figures are means over the labels: mean (macro)
AUC, label-wise (Hamming) accuracy, macro F1, mean sensitivity and specificity; and the exact-match
(subset) accuracy, the share of images with every label right.

A label whose split holds only negatives (or only positives) has no AUC there: it is NaN in the per-label
table and left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from thaw.core.errors import ThawError

TASK = "multilabel"
SINGLE = "single-label"


# ----------------------------------------------------------------------------------------- training


def loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the labels of each image (``reduction="none"``:
    one value per image), then over the images. ``pos_weight``: per label, how much a positive counts
    (``--balance loss``); ``smoothing``: targets pulled toward 0.5 by that much."""
    y = targets.float()
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    weight = None if pos_weight is None else pos_weight.to(logits.device)
    per_image = F.binary_cross_entropy_with_logits(
        logits.float(), y, pos_weight=weight, reduction="none"
    ).mean(1)
    return per_image if reduction == "none" else per_image.mean()


def pos_weight(labels: Sequence[Sequence[int]]) -> torch.Tensor:
    """``negatives / positives`` of each label in ``labels`` (the training set): a positive counts as
    much as all the negatives of its label. A label without positives gets 1 (nothing to weigh up)."""
    y = torch.as_tensor(labels, dtype=torch.float64)
    positives = y.sum(0)
    negatives = len(y) - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives)).float()


# ----------------------------------------------------------------------------------------- runs


def check_run(config, sources) -> None:
    """Settings that have no multi-label meaning are refused, each in one line, before a run starts."""
    if not sources.multilabel:
        return
    name = f"{sources.name} is multi-label (several labels per image)"
    if config.balance == "sampler":
        raise ThawError(
            f"--balance sampler draws images class by class; {name}, so an image has no one class: "
            f"use --balance loss (per-label positive weights) or none"
        )
    if config.pseudo_labels:
        raise ThawError(
            f"--pseudo-labels keeps confident single-class predictions; {name}: drop --pseudo-labels"
        )
    if config.ood:
        raise ThawError(f"--ood scores a folder of single-label classes; {name}: drop --ood")


def refuse(sources, what: str) -> None:
    """A command that works on single-label data only, given multi-label data: one line."""
    if sources.multilabel:
        raise ThawError(
            f"{what} works on single-label data; {sources.name} is multi-label (several labels per "
            f"image): use thaw fit, evaluate and predict for it"
        )
