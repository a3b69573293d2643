"""Forgetting diagnostics: how far fine-tuning moved the backbone from its pretrained state.

- feature drift: linear CKA (Kornblith et al. 2019) between the pretrained and the fine-tuned backbone's
  pooled features on a fixed probe set of the user's own validation images (1.0 = unchanged up to a
  rotation and scale);
- weight drift per layer group: ``||w - w0|| / ||w0||``;
- ImageNet retention, where the pretrained ImageNet classifier exists: top-1 agreement between the
  original head on the fine-tuned features and the original head on the pretrained features.

The pretrained side is measured once, before training (one forward over the probe set); each trained
plan then costs one more forward over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from thaw import data as thaw_data
from thaw.core.errors import ThawError
from thaw.core.results import Forgetting
from thaw.models import Classifier
from thaw.models.adapters import adapter_for
from thaw.models.build import parse_model_name

PROBE_IMAGES = 256
PROBE_SEED = 0  # the same images for every seed and strategy, so runs compare


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices over the same n examples ([n, d1], [n, d2]). Features that are
    the same for every example (a collapsed backbone) keep nothing of varying ones: 0.0 (NaN when both
    are constant)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norms > 0:
        return float(cross / norms)
    return 0.0 if bool(x.abs().sum() > 0) != bool(y.abs().sum() > 0) else float("nan")


def weight_drift(
    backbone: nn.Module, start: dict[str, torch.Tensor], layer_groups: list[list[str]]
) -> list[float]:
    """``||w - w0|| / ||w0||`` over each layer group's parameters (NaN for a group whose w0 is all zero)."""
    params = dict(backbone.named_parameters())
    out = []
    for names in layer_groups:
        moved = sum(float((params[n].detach() - start[n]).double().pow(2).sum()) for n in names)
        size = sum(float(start[n].double().pow(2).sum()) for n in names)
        out.append(round((moved / size) ** 0.5, 6) if size > 0 else float("nan"))
    return out


def probe_indices(n: int, k: int = PROBE_IMAGES, seed: int = PROBE_SEED) -> list[int]:
    """Up to ``k`` of ``n`` indices, seeded, in ascending order."""
    if n <= k:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def imagenet_head(model: Classifier) -> tuple[nn.Module | None, str]:
    """The pretrained model's own ImageNet classifier (features -> 1000 logits), or None and why not."""
    spec = model.spec
    if spec.weights.lower() == "none":
        return None, "random initial weights: no ImageNet head"
    try:
        source, arch, tag = parse_model_name(spec.name)
        adapter = adapter_for(source)
        full, _, _ = adapter.imagenet_model(arch, tag, spec.weights)
    except (ThawError, OSError, RuntimeError) as err:
        return None, f"the original classifier could not be loaded ({str(err).splitlines()[0]})"
    if full is None:
        return None, "the weights have no 1000-class ImageNet head"
    net = full.model
    head = adapter.imagenet_classifier(arch, net)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[0].in_features != model.num_features:
        return None, "the ImageNet classifier does not take this backbone's pooled features"
    return head.eval(), ""


@dataclass
class Probe:
    """The fixed probe images and what the pretrained model makes of them."""

    images: torch.Tensor  # normalised [n, C, H, W]
    features: torch.Tensor  # pretrained pooled features [n, D]
    start: dict[str, torch.Tensor]  # pretrained backbone parameters
    head: nn.Module | None
    imagenet_top1: torch.Tensor | None
    why_no_retention: str

    @classmethod
    def measure(cls, model: Classifier, decoded: thaw_data.Decoded) -> Probe:
        """Call on the pretrained model, before any plan trains it. The global RNG is left as it was (loading
        the ImageNet classifier builds a model), so training draws what it would without the probe."""
        with torch.random.fork_rng(devices=[]):
            return cls._measure(model, decoded)

    @classmethod
    def _measure(cls, model: Classifier, decoded: thaw_data.Decoded) -> Probe:
        chosen = probe_indices(len(decoded.images))
        transform = thaw_data.eval_transform(model.preprocessing)
        images = torch.stack([transform(decoded.images[i]) for i in chosen])
        start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
        head, why = imagenet_head(model)
        features = backbone_features(model, images)
        top1 = _top1(head, features) if head is not None else None
        return cls(images, features, start, head, top1, why)

    def diagnose(self, model: Classifier) -> Forgetting:
        features = backbone_features(model, self.images)
        agreement = None
        if self.head is not None:
            agreement = round(float((_top1(self.head, features) == self.imagenet_top1).double().mean()), 4)
        return Forgetting(
            probe_images=len(self.images),
            cka=round(linear_cka(self.features, features), 6),
            weight_drift=weight_drift(model.backbone, self.start, model.layer_groups),
            imagenet_agreement=agreement,
            imagenet_note=self.why_no_retention,
        )


@torch.no_grad()
def backbone_features(model: Classifier, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model.backbone(images[i : i + batch]) for i in range(0, len(images), batch)])
    model.train(was)
    return out


@torch.no_grad()
def _top1(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    return head(features).argmax(1)
