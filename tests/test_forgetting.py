"""Forgetting diagnostics (CKA, weight drift, ImageNet agreement) and the shift evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_class_folder, tiny_config

import thaw
from thaw.core.results import RunSummary
from thaw.data import Decoded
from thaw.train.forgetting import linear_cka, probe_indices, weight_drift
from thaw.use.shift import LEVELS, SEVERITIES, corrupt, corrupted


def test_linear_cka_is_one_for_a_rotation_and_scale_and_low_for_unrelated_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.2
    assert linear_cka(x, x[:, :8]) < 1.0
    assert linear_cka(x, torch.ones(200, 16)) == 0.0  # a collapsed backbone: every image the same


def test_weight_drift_is_relative_per_group():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        net[1].weight.mul_(1.5)
    assert weight_drift(net, start, [["0.weight"], ["1.weight"]]) == pytest.approx([0.0, 0.5])


def test_probe_indices_are_fixed_and_bounded():
    assert probe_indices(10) == list(range(10))
    chosen = probe_indices(1000, k=256)
    assert len(chosen) == 256 == len(set(chosen)) and chosen == probe_indices(1000, k=256)


def test_corruptions_are_seeded_change_the_image_and_grow_with_severity():
    g = torch.Generator().manual_seed(1)
    image = torch.randint(40, 215, (3, 48, 48), generator=g, dtype=torch.uint8)
    for kind in LEVELS:
        copies = [corrupt(image, kind, s, seed=7) for s in SEVERITIES]
        assert all(c.dtype == torch.uint8 and c.shape == image.shape for c in copies)
        change = [float((c.float() - image.float()).abs().mean()) for c in copies]
        assert change[0] > 0 and change[0] < change[2], kind
    assert torch.equal(corrupt(image, "gaussian_noise", 3, 7), corrupt(image, "gaussian_noise", 3, 7))
    data = Decoded(["a", "b"], [image, image], [0, 1])
    noisy = corrupted(data, "gaussian_noise", 1)
    assert not torch.equal(noisy.images[0], noisy.images[1])  # each image its own noise


def test_fit_with_shift_and_ood_reports_both(tmp_path):
    data = make_class_folder(tmp_path / "shapes")
    ood = make_class_folder(tmp_path / "ood", per_class=3)
    config = tiny_config(data, tmp_path / "run", shift="corruptions", ood=str(ood))
    summary = RunSummary.read(thaw.fit(config, quiet=True).path)
    shift = summary.shift
    assert shift.split == "test" and shift.severities == list(SEVERITIES)
    assert set(shift.corruptions) == set(LEVELS) and all(len(v) == 3 for v in shift.corruptions.values())
    assert shift.id_accuracy == pytest.approx(summary.final.test.accuracy)
    assert shift.ood.n == 6 and shift.ood_path == str(ood)


def test_ood_folder_with_other_classes_is_refused(tmp_path):
    data = make_class_folder(tmp_path / "shapes")
    ood = make_class_folder(tmp_path / "ood", per_class=2, classes=("red", "green"))
    with pytest.raises(thaw.ThawError, match="class\\(es\\) green are not the run's"):
        thaw.fit(tiny_config(data, tmp_path / "run", ood=str(ood)), quiet=True)


def test_imagenet_agreement_with_real_weights(tmp_path):
    """Real ImageNet MobileNetV2: a head-only plan keeps the original classifier's answers exactly, and
    fine-tuning at a high LR changes some of them."""
    from thaw.models.paths import torchvision_cached

    if not torchvision_cached("mobilenet_v2"):
        pytest.skip("the real mobilenet_v2 weights are not installed (thaw weights install mobilenet_v2)")
    data = make_class_folder(tmp_path / "shapes", per_class=10)
    config = tiny_config(
        data,
        tmp_path / "run",
        **{"model.name": "mobilenet_v2", "model.weights": "IMAGENET1K_V1", "data.image_size": 64, "lr": 0.01},
    )
    summary = RunSummary.read(thaw.fit(config, quiet=True).path)
    head, tuned = summary.forgetting["phase1"], summary.forgetting["phase2"]
    assert head.imagenet_agreement == 1.0 and head.cka == pytest.approx(1.0)
    assert 0.0 <= tuned.imagenet_agreement < 1.0 and tuned.cka < 1.0  # some ImageNet answers changed
