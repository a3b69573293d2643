"""A model's probabilities, in eval mode: over a loader (how the engine scores a phase), and over decoded
images by their center crop or test-time-augmentation views (the kept model's predictions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from thaw.core.file_prediction import views
from thaw.core.preprocessing import Preprocessing
from thaw.models import Classifier


@torch.no_grad()
def probabilities(model: Classifier, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, C] and labels [N] over a loader, in eval mode (multi-label: per-label
    probabilities and 0/1 labels, both [N, K])."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for x, y in loader:
        probs.append(model.probabilities(model(x.to(device))).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def view_probabilities(
    model: torch.nn.Module, images: Sequence[torch.Tensor], pre: Preprocessing, tta: bool
) -> torch.Tensor:
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
