"""Percentile bootstrap intervals of a split's metrics: the images resampled with replacement, seeded, so
an interval is the same on every run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from thaw.metrics.multilabel import nanmean

BOOTSTRAP = 1000
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity")
MULTILABEL_CI_METRICS = (
    "accuracy",
    "subset_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "sensitivity",
    "specificity",
)


def bootstrap_ci(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float | None, n: int = BOOTSTRAP, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile 95% intervals of the test metrics over ``n`` seeded resamples of the images (with
    replacement). A resample missing a class gives no AUC and is left out of the AUC's interval.
    Multi-label labels ([N, K]): :func:`multilabel_ci`, ``threshold`` one per label.

    Each resample is a count per image and every metric a weighted sum, the AUC included (``_Ranker``: the
    scores sorted once), so 1,000 resamples take milliseconds: scikit-learn's ``roc_auc_score`` once per
    resample took 6 s on 20 test images (its input checks), more on a larger test set."""
    if labels.ndim == 2:
        return multilabel_ci(probs, labels, threshold, n, seed)
    p, y = probs.double().numpy(), labels.numpy()
    num_classes = p.shape[1]
    if num_classes == 2:
        pred = (p[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
    else:
        pred = p.argmax(1)
    truth = np.eye(num_classes)[y]  # one-hot [N, K]: a resample's counts per class are one product each
    said = np.eye(num_classes)[pred]
    hit = truth * said
    right = (pred == y).astype(np.float64)
    # the macro one-vs-rest AUC (roc_auc_score's multi_class="ovr", average="macro"): one per class
    scored = range(1, 2) if num_classes == 2 else range(num_classes)
    rankers = [(_Ranker(p[:, c]), (y == c).astype(np.int64)) for c in scored]
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(n):  # a resample as a count per image (the same draws as indexing with them)
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(np.float64)
        n_true, n_pred, tp = w @ truth, w @ said, w @ hit
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = np.where(n_true > 0, tp / n_true, math.nan)
            f1s = np.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred), 0.0)
        rows["accuracy"].append(float(w @ right / len(y)))
        rows["balanced_accuracy"].append(float(np.nanmean(recalls)))
        rows["macro_f1"].append(float(np.mean(f1s)))
        if (n_true > 0).all():  # a resample missing a class has no AUC
            rows["auc"].append(float(np.mean([ranker.auc(positive, w) for ranker, positive in rankers])))
        if num_classes == 2:
            rows["sensitivity"].append(float(recalls[1]))
            rows["specificity"].append(float(recalls[0]))
    return percentile_intervals(rows)


def multilabel_ci(
    probs: torch.Tensor,
    targets: torch.Tensor,
    thresholds: Sequence[float] | None,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile 95% intervals over ``n`` seeded resamples of the images (with replacement), as the
    single-label ones. The mean AUC is over the labels that have an AUC on the whole split; a resample
    in which one of them lacks a positive or a negative gives no mean AUC and is left out of its
    interval."""
    p, y = probs.double().numpy(), targets.numpy().astype(np.int64)
    k = y.shape[1]
    cut = np.array([0.5] * k if thresholds is None else list(thresholds))
    pred = (p >= cut).astype(np.int64)
    scored = [j for j in range(k) if 0 < y[:, j].sum() < len(y)]
    rankers = {j: _Ranker(p[:, j]) for j in scored}
    cells = [((pred == a) & (y == b)).astype(np.float64) for a, b in ((1, 1), (1, 0), (0, 1), (0, 0))]
    exact = (pred == y).all(1).astype(np.float64)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {m: [] for m in MULTILABEL_CI_METRICS}
    for _ in range(n):  # a resample as a count per image: each sum is one matrix-vector product
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(np.float64)
        tp, fp, fn, tn = (w @ cell for cell in cells)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec = tp / (tp + fn), tn / (tn + fp)
            f1 = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        rows["accuracy"].append(float((tp + tn).sum() / (w.sum() * k)))
        rows["subset_accuracy"].append(float(w @ exact / w.sum()))
        rows["balanced_accuracy"].append(nanmean([nanmean([a, b]) for a, b in zip(sens, spec)]))
        rows["macro_f1"].append(float(f1.mean()))
        rows["sensitivity"].append(nanmean(list(sens)))
        rows["specificity"].append(nanmean(list(spec)))
        aucs = [rankers[j].auc(y[:, j], w) for j in scored]
        if scored and not any(math.isnan(a) for a in aucs):
            rows["auc"].append(float(np.mean(aucs)))
    return percentile_intervals(rows)


def percentile_intervals(rows: dict[str, list[float]]) -> dict[str, list[float]]:
    """The 2.5th and 97.5th percentiles of each metric's bootstrap values (NaN draws left out); a metric
    with no finite draw has no interval."""
    out = {}
    for k, values in rows.items():
        values = [v for v in values if not math.isnan(v)]
        if values:
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[k] = [round(float(lo), 4), round(float(hi), 4)]
    return out


class _Ranker:
    """The AUC of one label's scores under image weights (a bootstrap resample as counts per image): the
    scores sorted once, ties grouped, so each resample costs two weighted sums instead of a sort."""

    def __init__(self, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        _, self.group = np.unique(scores[self.order], return_inverse=True)
        self.groups = int(self.group.max()) + 1

    def auc(self, labels: np.ndarray, weights: np.ndarray) -> float:
        y, w = labels[self.order], weights[self.order]
        pos = np.bincount(self.group, w * (y == 1), self.groups)
        neg = np.bincount(self.group, w * (y == 0), self.groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return math.nan
        below = np.cumsum(neg) - neg  # negatives with a lower score; ties count half
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))
