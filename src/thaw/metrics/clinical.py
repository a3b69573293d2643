"""The decision threshold of a binary task, chosen on the validation split: Youden's J (sensitivity +
specificity - 1), or the highest threshold whose sensitivity reaches a target."""

from __future__ import annotations

import numpy as np


def choose_threshold(p1: np.ndarray, labels: np.ndarray, target_sensitivity: float | None = None) -> float:
    """The decision threshold on class 1's probability: Youden's J on ``labels`` (ties: the threshold
    nearest 0.5), or the highest threshold whose sensitivity reaches ``target_sensitivity``. A split with
    one class gives 0.5 (the argmax)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, p1)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf: predict nothing positive
    if target_sensitivity is not None:
        reach = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thresholds[reach[0]])
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])
