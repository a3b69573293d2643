"""Prove pretrained weights are real, offline: classify two photos that ship with scikit-image.

With an ImageNet head (torchvision's own classifier, or a timm file that kept its classifier), ``chelsea``
must have a cat class and ``coffee`` espresso among the top 5. Backbones without one (DINOv2) get a feature
check instead: two crops of the same photo must be nearer each other (cosine) than to the other photo's,
by a clear margin, and by clearly more than the same architecture with random weights manages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.data.decoded import resized
from thaw.data.images import eval_transform
from thaw.models.adapters import ImageNetModel, adapter_for
from thaw.models.build import build_classifier, parse_model_name

CATS = frozenset(range(281, 286))  # ImageNet-1k: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = frozenset({967})
PHOTOS = (("chelsea", "a cat", CATS), ("coffee", "espresso", ESPRESSO))
FEATURE_SIZE = 224
MIN_MARGIN = 0.05  # cosine: same-photo crops vs the other photo, and over random init


@dataclass(frozen=True)
class Verdict:
    name: str
    weights: str  # what was checked: a weights name or a file
    check: str  # "imagenet" or "features"
    lines: tuple[str, ...]


def verify(name: str, weights: str | None = None, log=print) -> Verdict:
    """Check the weights thaw would use for ``name`` offline (or ``weights``: a name, a file, or ``none``
    for random init). Logs what the model saw; raises :class:`ThawError` when the check fails."""
    photos = _photos()
    source, arch, tag = parse_model_name(name)
    adapter = adapter_for(source)
    full, described, build_weights = adapter.imagenet_model(arch, tag, weights)
    log(f"{name} ({described})")
    if full is not None:
        passed, lines = imagenet_check(full, photos)
        check = "imagenet"
    else:
        passed, lines = feature_check(adapter.model_name(arch), build_weights, photos)
        check = "features"
    for line in lines:
        log(line)
    if not passed:
        what = {
            "imagenet": "a cat and espresso are not both in the top 5",
            "features": "crops of one photo are not clearly nearer each other than random weights make them",
        }[check]
        raise ThawError(
            f"{name} ({described}) failed the check: {what}. These are not working pretrained "
            f"weights for this architecture; reinstall or re-import them"
        )
    log(f"{name}: ok, real pretrained weights ({'ImageNet top 5' if check == 'imagenet' else 'features'})")
    return Verdict(name, described, check, tuple(lines))


def imagenet_check(full: ImageNetModel, photos: dict[str, Image.Image]) -> tuple[bool, list[str]]:
    model = full.model.eval()
    passed, lines = True, []
    with torch.no_grad():
        for photo, label, expected in PHOTOS:
            probs = model(full.transform(photos[photo]).unsqueeze(0)).softmax(-1)[0]
            top = probs.topk(5)
            hit = any(int(i) in expected for i in top.indices)
            passed &= hit
            shown = ", ".join(
                f"{full.categories[int(i)]} {100 * float(p):.1f}%"
                for p, i in zip(top.values, top.indices, strict=True)
            )
            verdict = "ok" if hit else f"FAIL: {label} is not in the top 5"
            lines.append(f"  {photo} ({label}): {shown}  -> {verdict}")
    return passed, lines


def feature_check(name: str, weights: str, photos: dict[str, Image.Image]) -> tuple[bool, list[str]]:
    """Cosine similarity of pooled features: two crops of each photo, against the other photo."""
    config = ModelConfig(name=name, weights=weights, dropout=0.0)
    pretrained = build_classifier(config, 1, image_size=FEATURE_SIZE)
    same, cross = _crop_similarities(pretrained.backbone, pretrained.preprocessing, photos)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random = build_classifier(dataclasses.replace(config, weights="none"), 1, image_size=FEATURE_SIZE)
    random_same, random_cross = _crop_similarities(random.backbone, random.preprocessing, photos)
    margin = round(min(same.values()) - cross, 3) + 0.0  # + 0.0: no "-0.000"
    baseline = round(min(random_same.values()) - random_cross, 3) + 0.0
    passed = margin >= MIN_MARGIN and margin >= baseline + MIN_MARGIN
    return passed, [
        f"  no ImageNet head: feature check at {FEATURE_SIZE} px (cosine similarity of pooled features)",
        "  two crops of the same photo: "
        + ", ".join(f"{p} {s:.3f}" for p, s in same.items())
        + f"; across photos at most {cross:.3f}",
        f"  margin {margin:.3f} (random init: {baseline:.3f}; needs >= {MIN_MARGIN} and "
        f"{MIN_MARGIN} over random)  -> {'ok' if passed else 'FAIL'}",
    ]


def _crop_similarities(
    backbone: nn.Module, pre: Preprocessing, photos: dict[str, Image.Image]
) -> tuple[dict[str, float], float]:
    transform = eval_transform(pre)
    names = [p for p, _, _ in PHOTOS]
    crops = [transform(resized(c, pre)) for p in names for c in _two_crops(photos[p])]
    with torch.no_grad():
        features = nn.functional.normalize(backbone.eval()(torch.stack(crops)), dim=-1)
    sim = features @ features.T
    same = {p: float(sim[2 * i, 2 * i + 1]) for i, p in enumerate(names)}
    cross = float(sim[:2, 2:].max())
    return same, cross


def _two_crops(photo: Image.Image) -> list[Image.Image]:
    """The top-left and bottom-right 80% of the photo: overlapping views of one scene."""
    w, h = photo.size
    cw, ch = int(0.8 * w), int(0.8 * h)
    return [photo.crop((0, 0, cw, ch)), photo.crop((w - cw, h - ch, w, h))]


def _photos() -> dict[str, Image.Image]:
    try:
        from skimage import data
    except ImportError:
        raise ThawError(
            "`thaw weights verify` needs scikit-image for its test photos: "
            "pip install 'thaw-transfer[verify]'"
        ) from None
    return {p: Image.fromarray(np.asarray(getattr(data, p)())).convert("RGB") for p, _, _ in PHOTOS}
