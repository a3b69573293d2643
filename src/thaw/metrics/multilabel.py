"""Multi-label classification: several findings per image (MedMNIST's ChestMNIST, a CSV with one 0/1
column per label). The model has one output per label, each an independent sigmoid trained with binary
cross-entropy; the probabilities of an image need not sum to 1.

Targets are 0/1 integer tensors ``[N, K]``; probabilities ``[N, K]``. Each label is a binary task of its
own: its AUC, and a decision threshold chosen on validation as ``thaw.metrics.clinical`` chooses a binary one
(Youden's J, or ``--target-sensitivity``). The headline figures are means over the labels: mean (macro)
AUC, label-wise (Hamming) accuracy, macro F1, mean sensitivity and specificity; and the exact-match
(subset) accuracy, the share of images with every label right.

A label whose split holds only negatives (or only positives) has no AUC there: it is NaN in the per-label
table and left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_calibration_error,
    multilabel_exact_match,
    multilabel_f1_score,
)

from thaw.core.results import Metrics
from thaw.metrics.clinical import choose_threshold


def metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    thresholds: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> Metrics:
    """The metrics of :class:`thaw.core.results.Metrics` for a multi-label split: label ``k`` is predicted
    where its probability reaches ``thresholds[k]`` (default 0.5)."""
    probs, y = probs.float(), targets.long()
    n, k = y.shape
    names = list(names) if names is not None else [str(i) for i in range(k)]
    cut = torch.tensor([0.5] * k if thresholds is None else list(thresholds), dtype=torch.float32)
    preds = (probs >= cut).long()
    per_label = {names[j]: _label(probs[:, j], preds[:, j], y[:, j], float(cut[j])) for j in range(k)}
    aucs = [row["auc"] for row in per_label.values()]
    sens = [row["sensitivity"] for row in per_label.values()]
    specs = [row["specificity"] for row in per_label.values()]
    balanced = [nanmean([a, b]) for a, b in zip(sens, specs, strict=True)]
    loss_value = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), y.float())
    return Metrics(
        n=n,
        accuracy=float((preds == y).float().mean()),
        balanced_accuracy=nanmean(balanced),
        macro_f1=float(multilabel_f1_score(preds, y, k, average="macro")),
        auc=nanmean(aucs),
        loss=float(loss_value),
        confusion=[],
        sensitivity=nanmean(sens),
        specificity=nanmean(specs),
        threshold=math.nan,
        ece=float(binary_calibration_error(probs.flatten(), y.flatten(), n_bins=15)),
        subset_accuracy=float(multilabel_exact_match(preds, y, k)),
        per_label=per_label,
    )


def _label(probs: torch.Tensor, p: torch.Tensor, t: torch.Tensor, cut: float) -> dict:
    """One label's row of the per-label table: AUC (NaN without both classes), the threshold, sensitivity,
    specificity, F1, the positives and the confusion counts."""
    tp, fp = int(((p == 1) & (t == 1)).sum()), int(((p == 1) & (t == 0)).sum())
    fn, tn = int(((p == 0) & (t == 1)).sum()), int(((p == 0) & (t == 0)).sum())
    both = 0 < int(t.sum()) < len(t)
    return {
        "auc": float(binary_auroc(probs, t)) if both else math.nan,
        "threshold": cut,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "positives": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def nanmean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN; NaN when none is."""
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def choose_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, target_sensitivity: float | None = None
) -> list[float]:
    """One decision threshold per label, chosen on ``probs``/``targets`` (the validation split) as
    :func:`thaw.metrics.clinical.choose_threshold` chooses a binary one; a label with one class there gets
    0.5."""
    p, y = probs.double().numpy(), targets.numpy()
    return [choose_threshold(p[:, j], y[:, j], target_sensitivity) for j in range(y.shape[1])]
