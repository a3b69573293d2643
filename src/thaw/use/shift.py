"""The saved model out of distribution: corrupted copies of the test images (ImageNet-C style, Hendrycks
and Dietterich 2019) and a user-given folder of the same classes.

Five corruptions at three severities (ImageNet-C's severities 1, 3 and 5), applied to the decoded uint8
images before the usual center crop and normalisation, with torchvision transforms v2:

- ``gaussian_noise``: additive noise, sigma 0.08 / 0.18 / 0.38 of the 0-1 range (ImageNet-C's values);
- ``blur``: Gaussian blur, sigma 1 / 3 / 6 pixels at 224 px, scaled with the image size;
- ``contrast``: pixels pulled toward the image mean, keeping 0.4 / 0.2 / 0.05 of the contrast;
- ``brightness``: 0.1 / 0.3 / 0.5 added to every channel (ImageNet-C adds it to HSV value), clipped;
- ``jpeg``: JPEG compression at quality 25 / 15 / 7.

The noise is seeded per (seed, image), so a corrupted test set is the same for every run and strategy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from thaw import data as thaw_data
from thaw.core.config import RunConfig
from thaw.core.errors import ThawError
from thaw.core.results import Shift
from thaw.data.decoded import decode
from thaw.data.sources import evaluation_items
from thaw.metrics.classification import classification_metrics
from thaw.models import Classifier
from thaw.train.probabilities import probabilities

SEVERITIES = (1, 3, 5)
LEVELS = {
    "gaussian_noise": (0.08, 0.18, 0.38),
    "blur": (1.0, 3.0, 6.0),
    "contrast": (0.4, 0.2, 0.05),
    "brightness": (0.1, 0.3, 0.5),
    "jpeg": (25, 15, 7),
}


def corrupt(image: torch.Tensor, kind: str, severity: int, seed: int = 0) -> torch.Tensor:
    """One corrupted copy of a uint8 [C, H, W] image, at ImageNet-C severity 1, 3 or 5."""
    level = LEVELS[kind][SEVERITIES.index(severity)]
    x = image.float() / 255
    if kind == "gaussian_noise":
        g = torch.Generator().manual_seed(seed)
        x = x + torch.randn(x.shape, generator=g) * level
    elif kind == "blur":
        sigma = level * min(image.shape[-2:]) / 224
        if sigma < 0.3:  # below a third of a pixel a blur kernel changes nothing
            sigma = 0.3
        size = 2 * math.ceil(3 * sigma) + 1
        x = F.gaussian_blur(x, [size, size], [sigma, sigma])
    elif kind == "contrast":
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        x = (x - mean) * level + mean
    elif kind == "brightness":
        x = x + level
    elif kind == "jpeg":
        return F.jpeg(image, quality=int(level))
    else:
        raise ThawError(f"unknown corruption {kind!r}; known: {', '.join(LEVELS)}")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def corrupted(data: thaw_data.Decoded, kind: str, severity: int, seed: int = 0) -> thaw_data.Decoded:
    images = [corrupt(img, kind, severity, seed * 1_000_003 + i) for i, img in enumerate(data.images)]
    return thaw_data.Decoded(data.keys, images, data.labels)


def evaluate_shift(
    model: Classifier,
    decoded: dict[str, thaw_data.Decoded],
    config: RunConfig,
    say: Callable[[str], None] = print,
) -> Shift | None:
    """``config.shift`` and ``config.ood`` for the saved model; None when neither is asked for."""
    if config.shift == "none" and not config.ood:
        return None
    split = "test" if decoded.get("test") and decoded["test"].images else "val"
    clean = decoded[split]
    accuracy = _scorer(model, config)
    result = Shift(split=split, id_accuracy=accuracy(clean).accuracy)
    if config.shift == "corruptions":
        table = {
            kind: [
                round(accuracy(corrupted(clean, kind, s, config.data.split_seed)).accuracy, 4)
                for s in SEVERITIES
            ]
            for kind in LEVELS
        }
        mean = sum(sum(v) for v in table.values()) / sum(len(v) for v in table.values())
        result = Shift(split, result.id_accuracy, list(SEVERITIES), table, round(mean, 4))
        say(
            f"  shift: {split} accuracy {100 * result.id_accuracy:.1f}, mean over {len(LEVELS)} "
            f"corruptions x {len(SEVERITIES)} severities {100 * mean:.1f}"
        )
    if config.ood:
        metrics = accuracy(ood_images(config.ood, model))
        result = Shift(**{**result.__dict__, "ood_path": str(config.ood), "ood": metrics})
        say(
            f"  out of distribution ({config.ood}): accuracy {100 * metrics.accuracy:.1f} "
            f"on {metrics.n} images"
        )
    return result


def _scorer(model: Classifier, config: RunConfig):
    transform = thaw_data.eval_transform(model.preprocessing)

    def score(data: thaw_data.Decoded):
        return classification_metrics(
            *probabilities(model, thaw_data.loader(data, transform, config.data, shuffle=False))
        )

    return score


def ood_images(path: str, model: Classifier) -> thaw_data.Decoded:
    """Every labelled image under ``path`` (any layout ``thaw fit`` takes; its test split if it has one),
    its labels mapped onto the run's classes by name."""

    if not Path(path).exists():
        raise ThawError(f"--ood {path}: no such folder; give a labelled folder with the run's classes")
    items, _, names = evaluation_items(path)
    unknown = sorted(set(names) - set(model.class_names))
    if unknown:
        raise ThawError(
            f"--ood {path}: class(es) {', '.join(unknown)} are not the run's ({', '.join(model.class_names)})"
        )
    index = {n: model.class_names.index(n) for n in names}
    items = [type(it)(it.key, index[names[it.label]], it.split, it.array) for it in items]
    decoded, failed = decode(items, model.preprocessing, model.spec.in_channels, False)
    if not decoded.images:
        raise ThawError(f"--ood {path}: no decodable images")
    return decoded
