"""The saved model scored the way a clinic would use it: a decision threshold chosen on validation,
optional test-time augmentation, bootstrap confidence intervals and a reliability (calibration) plot.

Binary tasks treat class 1 (the second class name, alphabetically or by index) as the positive class:
sensitivity is its recall, specificity the recall of class 0. The threshold is chosen on the validation
split only (Youden's J = sensitivity + specificity - 1, or the highest threshold whose validation
sensitivity reaches ``--target-sensitivity``) and then applied unchanged to the test split.

Multi-label tasks (``thaw.metrics.multilabel``) get the same, one label at a time: a threshold per label
chosen on validation, each label's sensitivity and specificity at it, and intervals on the means over the
labels.
"""

from __future__ import annotations

import numpy as np
import torch

from thaw.core.file_prediction import views
from thaw.core.preprocessing import Preprocessing
from thaw.core.results import Metrics, Operating
from thaw.metrics.bootstrap import bootstrap_ci
from thaw.metrics.classification import classification_metrics
from thaw.metrics.clinical import choose_threshold
from thaw.metrics.multilabel import choose_thresholds

MIN_PER_CLASS = 5
"""A binary threshold is chosen on validation only with at least this many images of each class; with
fewer, one image decides it (a threshold of 0.997 from 2 images), so the argmax is kept instead."""



@torch.no_grad()
def predict_views(model: torch.nn.Module, images: list[torch.Tensor], pre: Preprocessing, tta: bool):
    """Class probabilities [N, C] of resized uint8 images (multi-label: per-label probabilities): the
    center crop, or (``tta``) the mean over the center crop, its mirror image and four shifted crops
    (``thaw predict --tta``'s views)."""

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


