"""The saved model scored the way a clinic would use it: a decision threshold chosen on validation,
optional test-time augmentation, bootstrap confidence intervals and a reliability (calibration) plot.

Binary tasks treat class 1 (the second class name, alphabetically or by index) as the positive class:
sensitivity is its recall, specificity the recall of class 0. The threshold is chosen on the validation
split only (Youden's J = sensitivity + specificity - 1, or the highest threshold whose validation
sensitivity reaches ``--target-sensitivity``) and then applied unchanged to the test split.

Multi-label tasks (``thaw.multilabel``) get the same, one label at a time: a threshold per label chosen on
validation, each label's sensitivity and specificity at it, and intervals on the means over the labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from thaw.evaluate import classification_metrics, save_figure
from thaw.preprocessing import Preprocessing
from thaw.results import Metrics, Operating

BOOTSTRAP = 1000
MIN_PER_CLASS = 5
"""A binary threshold is chosen on validation only with at least this many images of each class; with
fewer, one image decides it (a threshold of 0.997 from 2 images), so the argmax is kept instead."""
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity")


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


def bootstrap_ci(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float | None, n: int = BOOTSTRAP, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile 95% intervals of the test metrics over ``n`` seeded resamples of the images (with
    replacement). A resample missing a class gives no AUC and is left out of the AUC's interval.
    Multi-label labels ([N, K]): :func:`thaw.multilabel.bootstrap_ci`, ``threshold`` one per label."""
    from sklearn.metrics import roc_auc_score

    if labels.ndim == 2:
        from thaw import multilabel

        return multilabel.bootstrap_ci(probs, labels, threshold, n, seed)
    p, y = probs.double().numpy(), labels.numpy()
    num_classes = p.shape[1]
    if num_classes == 2:
        pred = (p[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
    else:
        pred = p.argmax(1)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        yy, pp = y[idx], pred[idx]
        recalls, f1s = [], []
        for c in range(num_classes):
            tp = np.sum((pp == c) & (yy == c))
            n_true, n_pred = np.sum(yy == c), np.sum(pp == c)
            recalls.append(tp / n_true if n_true else math.nan)
            f1s.append(2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0)
        rows["accuracy"].append(float(np.mean(yy == pp)))
        rows["balanced_accuracy"].append(float(np.nanmean(recalls)))
        rows["macro_f1"].append(float(np.mean(f1s)))
        if len(np.unique(yy)) == num_classes:
            score = p[idx, 1] if num_classes == 2 else p[idx]
            rows["auc"].append(float(roc_auc_score(yy, score, multi_class="ovr", average="macro")))
        if num_classes == 2:
            rows["sensitivity"].append(recalls[1])
            rows["specificity"].append(recalls[0])
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


@torch.no_grad()
def predict_views(model: torch.nn.Module, images: list[torch.Tensor], pre: Preprocessing, tta: bool):
    """Class probabilities [N, C] of resized uint8 images (multi-label: per-label probabilities): the
    center crop, or (``tta``) the mean over the center crop, its mirror image and four shifted crops
    (``thaw predict --tta``'s views)."""
    from thaw.predictions import views

    was_training = model.training
    model.eval()
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    out = []
    for start in range(0, len(images), 64):
        batch = images[start : start + 64]
        per_view = None
        for k in range(len(views(batch[0].shape[1], batch[0].shape[2], pre.size, pre.resize_size, tta))):
            crops = []
            for x in batch:
                top, left, flip = views(x.shape[1], x.shape[2], pre.size, pre.resize_size, tta)[k]
                crop = x[:, top : top + pre.size, left : left + pre.size]
                crops.append(((crop.flip(-1) if flip else crop).float() / 255 - mean) / std)
            p = model.probabilities(model(torch.stack(crops)))
            per_view = p if per_view is None else per_view + p
        n_views = len(views(batch[0].shape[1], batch[0].shape[2], pre.size, pre.resize_size, tta))
        out.append(per_view / n_views)
    model.train(was_training)
    return torch.cat(out)


def operating_point(
    model, decoded: dict, pre: Preprocessing, tta: bool, target_sensitivity: float | None, seed: int = 0
) -> tuple[Operating, dict[str, torch.Tensor]]:
    """The final model's val and test metrics at the threshold chosen on val (binary; multi-label: one
    per label), with bootstrap CIs on test; also returns the probabilities per split (for the
    reliability plot)."""
    probs = {s: predict_views(model, d.images, pre, tta) for s, d in decoded.items() if s in ("val", "test")}
    labels = {s: torch.tensor(decoded[s].labels) for s in probs}
    if model.multilabel:
        return _multilabel_operating_point(model, probs, labels, tta, target_sensitivity, seed)
    threshold, rule = None, "argmax"
    counts = np.bincount(labels["val"].numpy(), minlength=2)
    if probs["val"].shape[1] == 2 and counts.min() < MIN_PER_CLASS:
        few = model.class_names[int(counts.argmin())]
        rule = (
            f"argmax: validation has {counts.min()} image(s) of {few}, too few to choose a threshold "
            f"(it needs {MIN_PER_CLASS} of each class)"
        )
    elif probs["val"].shape[1] == 2:
        threshold = choose_threshold(probs["val"][:, 1].numpy(), labels["val"].numpy(), target_sensitivity)
        rule = (
            f"validation sensitivity >= {target_sensitivity:g}"
            if target_sensitivity is not None
            else "Youden's J on validation"
        )
    val = classification_metrics(probs["val"], labels["val"], threshold)
    test = None
    if "test" in probs:
        test = classification_metrics(probs["test"], labels["test"], threshold)
        test = _with_ci(test, bootstrap_ci(probs["test"], labels["test"], threshold, seed=seed))
    return Operating(threshold, rule, tta, val, test), {s: (probs[s], labels[s]) for s in probs}


def _multilabel_operating_point(model, probs, labels, tta, target_sensitivity, seed):
    from thaw.multilabel import choose_thresholds

    cuts = choose_thresholds(probs["val"], labels["val"], target_sensitivity)
    rule = (
        f"per label: validation sensitivity >= {target_sensitivity:g}"
        if target_sensitivity is not None
        else "per label: Youden's J on validation"
    )
    names = model.class_names
    val = classification_metrics(probs["val"], labels["val"], cuts, names)
    test = None
    if "test" in probs:
        test = classification_metrics(probs["test"], labels["test"], cuts, names)
        test = _with_ci(test, bootstrap_ci(probs["test"], labels["test"], cuts, seed=seed))
    thresholds = {name: float(cut) for name, cut in zip(names, cuts)}
    operating = Operating(None, rule, tta, val, test, thresholds=thresholds)
    return operating, {s: (probs[s], labels[s]) for s in probs}


def _with_ci(metrics: Metrics, ci: dict[str, list[float]]) -> Metrics:
    import dataclasses

    return dataclasses.replace(metrics, ci=ci)


def plot_reliability(probs: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "", bins: int = 15):
    """Reliability diagram: mean top-class confidence vs accuracy per confidence bin, bar width = bin,
    the diagonal = perfect calibration; the ECE in the title. Multi-label: every (image, label)
    probability against how often that label is present, per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multilabel = labels.ndim == 2
    if multilabel:
        conf, correct = probs.flatten().float(), labels.flatten().float()
    else:
        conf, pred = probs.max(1)
        correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            ece += float(inside.float().mean()) * abs(acc - mean_conf)
            ax.bar(float(lo), acc, width=float(hi - lo), align="edge", edgecolor="black", alpha=0.7)
            ax.plot([mean_conf], [acc], "k.", markersize=4)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (every label)" if multilabel else "confidence (top class)")
    ax.set_ylabel("share present" if multilabel else "accuracy")
    ax.set_title(f"{title} ECE {ece:.3f}".strip(), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
