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

import dataclasses

import numpy as np
import torch

from thaw.core.results import Metrics, Operating
from thaw.metrics.bootstrap import bootstrap_ci
from thaw.metrics.classification import classification_metrics
from thaw.metrics.clinical import choose_threshold
from thaw.metrics.multilabel import choose_thresholds

MIN_PER_CLASS = 5
"""A binary threshold is chosen on validation only with at least this many images of each class; with
fewer, one image decides it (a threshold of 0.997 from 2 images), so the argmax is kept instead."""


def operating_point(
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]],
    class_names: list[str],
    multilabel: bool,
    tta: bool,
    target_sensitivity: float | None,
    seed: int = 0,
) -> Operating:
    """The final model's val and test metrics at the threshold chosen on val (binary; multi-label: one
    per label), with bootstrap CIs on test, from its probabilities and labels per split (``scored``:
    ``engine.Trained.predictions``, computed once; ``tta``: whether they are averaged over views)."""
    probs = {s: p for s, (p, _) in scored.items()}
    labels = {s: y for s, (_, y) in scored.items()}
    if multilabel:
        return _multilabel_operating_point(class_names, probs, labels, tta, target_sensitivity, seed)
    threshold, rule = None, "argmax"
    counts = np.bincount(labels["val"].numpy(), minlength=2)
    if probs["val"].shape[1] == 2 and counts.min() < MIN_PER_CLASS:
        few = class_names[int(counts.argmin())]
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
    return Operating(threshold, rule, tta, val, test)


def _multilabel_operating_point(names, probs, labels, tta, target_sensitivity, seed):
    cuts = choose_thresholds(probs["val"], labels["val"], target_sensitivity)
    rule = (
        f"per label: validation sensitivity >= {target_sensitivity:g}"
        if target_sensitivity is not None
        else "per label: Youden's J on validation"
    )
    val = classification_metrics(probs["val"], labels["val"], cuts, names)
    test = None
    if "test" in probs:
        test = classification_metrics(probs["test"], labels["test"], cuts, names)
        test = _with_ci(test, bootstrap_ci(probs["test"], labels["test"], cuts, seed=seed))
    thresholds = {name: float(cut) for name, cut in zip(names, cuts)}
    return Operating(None, rule, tta, val, test, thresholds=thresholds)


def _with_ci(metrics: Metrics, ci: dict[str, list[float]]) -> Metrics:
    return dataclasses.replace(metrics, ci=ci)
