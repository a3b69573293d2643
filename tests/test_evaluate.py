"""Metrics: binary vs multiclass AUC, a split with one class, and summaries that stay valid JSON."""

import json
import math

import pytest
import torch

from thaw.core.results import dumps
from thaw.metrics.classification import classification_metrics


def test_binary_auc_is_of_class_one():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 0, 1])
    m = classification_metrics(probs, labels)
    assert m.auc == pytest.approx(0.75)  # pairs (pos, neg) ranked right: 3 of 4
    assert m.accuracy == pytest.approx(0.5) and m.n == 4
    assert m.confusion == [[1, 1], [1, 1]]


def test_multiclass_auc_is_macro_one_vs_rest_and_balanced_accuracy():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(probs, labels)
    assert m.auc == pytest.approx(1.0)
    assert m.accuracy == pytest.approx(0.75) and m.balanced_accuracy == pytest.approx((1 + 0.5 + 1) / 3)
    assert m.loss == pytest.approx(-sum(math.log(p) for p in (0.8, 0.8, 0.8, 0.4)) / 4, rel=1e-5)


def test_a_split_with_one_class_has_no_auc_and_stays_valid_json():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    m = classification_metrics(probs, torch.tensor([0, 0]))
    assert math.isnan(m.auc) and m.accuracy == pytest.approx(0.5)
    text = dumps(m.to_dict())
    assert json.loads(text)["auc"] is None  # not a bare NaN, which no JSON parser accepts
