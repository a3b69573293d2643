"""The metrics of one split: accuracy, balanced accuracy, macro-F1, AUC, loss, confusion, ECE, and for
binary tasks sensitivity and specificity. Pure numbers from probabilities and labels: no model, no files."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from thaw.core.results import Metrics
from thaw.metrics import multilabel


def classification_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float | Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> Metrics:
    """accuracy, balanced accuracy, macro-F1, AUC (binary: of class 1; multiclass: macro one-vs-rest),
    loss (cross-entropy), the confusion matrix, the count, ECE (top-class confidence, 15 bins) and, for
    binary tasks, sensitivity and specificity of class 1. Binary predictions are class 1 where its
    probability is at least ``threshold`` (default: the argmax, i.e. 0.5).

    Multi-label labels ([N, K] of 0/1): :func:`thaw.metrics.multilabel.metrics`, ``threshold`` one per label
    (default 0.5 each) and ``names`` the label names of the per-label table."""
    if labels.ndim == 2:
        return multilabel.metrics(probs, labels, threshold, names)
    num_classes = probs.shape[1]
    preds = probs.argmax(dim=1)
    binary = num_classes == 2
    if binary and threshold is not None:
        preds = (probs[:, 1] >= threshold).long()
    present = labels.unique().numel() > 1
    auc = (
        multiclass_auroc(probs, labels, num_classes, average="macro")
        if present
        else torch.tensor(float("nan"))
    )
    if binary and present:
        auc = binary_auroc(probs[:, 1], labels)
    nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
    confusion = multiclass_confusion_matrix(preds, labels, num_classes)
    nan = float("nan")
    sensitivity = specificity = nan
    if binary:
        tn, fp, fn, tp = (float(v) for v in confusion.flatten())
        sensitivity = tp / (tp + fn) if tp + fn else nan
        specificity = tn / (tn + fp) if tn + fp else nan
    return Metrics(
        n=int(labels.numel()),
        accuracy=float((preds == labels).float().mean()),
        balanced_accuracy=float(multiclass_accuracy(preds, labels, num_classes, average="macro")),
        macro_f1=float(multiclass_f1_score(preds, labels, num_classes, average="macro")),
        auc=float(auc),
        loss=float(nll),
        confusion=confusion.tolist(),
        sensitivity=sensitivity,
        specificity=specificity,
        threshold=(0.5 if threshold is None else float(threshold)) if binary else nan,
        ece=float(multiclass_calibration_error(probs, labels, num_classes, n_bins=15)),
    )
