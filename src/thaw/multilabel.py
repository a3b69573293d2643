"""Multi-label classification: several findings per image (MedMNIST's ChestMNIST, a CSV with one 0/1
column per label). The model has one output per label, each an independent sigmoid trained with binary
cross-entropy; the probabilities of an image need not sum to 1.

Targets are 0/1 integer tensors ``[N, K]``; probabilities ``[N, K]``. Each label is a binary task of its
own: its AUC, and a decision threshold chosen on validation as ``thaw.clinical`` chooses a binary one
(Youden's J, or ``--target-sensitivity``). The headline figures are means over the labels: mean (macro)
AUC, label-wise (Hamming) accuracy, macro F1, mean sensitivity and specificity; and the exact-match
(subset) accuracy, the share of images with every label right.

A label whose split holds only negatives (or only positives) has no AUC there: it is NaN in the per-label
table and left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from thaw.errors import ThawError
from thaw.results import Metrics

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


# ----------------------------------------------------------------------------------------- metrics


def metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    thresholds: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> Metrics:
    """The metrics of :class:`thaw.results.Metrics` for a multi-label split: label ``k`` is predicted
    where its probability reaches ``thresholds[k]`` (default 0.5)."""
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_calibration_error,
        multilabel_exact_match,
        multilabel_f1_score,
    )

    probs, y = probs.float(), targets.long()
    n, k = y.shape
    names = list(names) if names is not None else [str(i) for i in range(k)]
    cut = torch.tensor([0.5] * k if thresholds is None else list(thresholds), dtype=torch.float32)
    preds = (probs >= cut).long()
    per_label, aucs, sens, specs, balanced = {}, [], [], [], []
    for j in range(k):
        p, t = preds[:, j], y[:, j]
        tp, fp = int(((p == 1) & (t == 1)).sum()), int(((p == 1) & (t == 0)).sum())
        fn, tn = int(((p == 0) & (t == 1)).sum()), int(((p == 0) & (t == 0)).sum())
        both = 0 < int(t.sum()) < n
        auc = float(binary_auroc(probs[:, j], t)) if both else math.nan
        sensitivity = tp / (tp + fn) if tp + fn else math.nan
        specificity = tn / (tn + fp) if tn + fp else math.nan
        per_label[names[j]] = {
            "auc": auc,
            "threshold": float(cut[j]),
            "sensitivity": sensitivity,
            "specificity": specificity,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "positives": tp + fn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        }
        aucs.append(auc)
        sens.append(sensitivity)
        specs.append(specificity)
        balanced.append(_nanmean([sensitivity, specificity]))
    loss_value = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), y.float())
    return Metrics(
        n=n,
        accuracy=float((preds == y).float().mean()),
        balanced_accuracy=_nanmean(balanced),
        macro_f1=float(multilabel_f1_score(preds, y, k, average="macro")),
        auc=_nanmean(aucs),
        loss=float(loss_value),
        confusion=[],
        sensitivity=_nanmean(sens),
        specificity=_nanmean(specs),
        threshold=math.nan,
        ece=float(binary_calibration_error(probs.flatten(), y.flatten(), n_bins=15)),
        subset_accuracy=float(multilabel_exact_match(preds, y, k)),
        per_label=per_label,
    )


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def choose_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, target_sensitivity: float | None = None
) -> list[float]:
    """One decision threshold per label, chosen on ``probs``/``targets`` (the validation split) as
    :func:`thaw.clinical.choose_threshold` chooses a binary one; a label with one class there gets 0.5."""
    from thaw.clinical import choose_threshold

    p, y = probs.double().numpy(), targets.numpy()
    return [choose_threshold(p[:, j], y[:, j], target_sensitivity) for j in range(y.shape[1])]


CI_METRICS = (
    "accuracy",
    "subset_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "sensitivity",
    "specificity",
)


def bootstrap_ci(
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
    rows: dict[str, list[float]] = {m: [] for m in CI_METRICS}
    for _ in range(n):  # a resample as a count per image: each sum is one matrix-vector product
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(np.float64)
        tp, fp, fn, tn = (w @ cell for cell in cells)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec = tp / (tp + fn), tn / (tn + fp)
            f1 = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        rows["accuracy"].append(float((tp + tn).sum() / (w.sum() * k)))
        rows["subset_accuracy"].append(float(w @ exact / w.sum()))
        rows["balanced_accuracy"].append(_nanmean([_nanmean([a, b]) for a, b in zip(sens, spec)]))
        rows["macro_f1"].append(float(f1.mean()))
        rows["sensitivity"].append(_nanmean(list(sens)))
        rows["specificity"].append(_nanmean(list(spec)))
        aucs = [rankers[j].auc(y[:, j], w) for j in scored]
        if scored and not any(math.isnan(a) for a in aucs):
            rows["auc"].append(float(np.mean(aucs)))
    from thaw.clinical import percentile_intervals  # clinical imports this module

    return percentile_intervals(rows)


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
