"""The torchvision v2 training transform of an augmentation :class:`~thaw.core.augment_policy.Policy`."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from thaw.core.augment_policy import Policy
from thaw.core.preprocessing import Preprocessing


def transform(policy: Policy, pre: Preprocessing, channels: int = 3) -> v2.Transform:
    """The training transform of ``policy`` for images already resized to ``pre.resize_size`` (uint8):
    crop (random resized, or the eval center crop), flips and rotations, colour, then normalize.
    ``standard`` is exactly thaw's transform before policies existed (the same random draws)."""
    interpolation = InterpolationMode(pre.interpolation)
    steps: list = [
        v2.RandomResizedCrop(pre.size, scale=(policy.crop, 1.0), interpolation=interpolation, antialias=True)
        if policy.crop is not None
        else v2.CenterCrop(pre.size)
    ]
    steps += op_steps(policy, channels)
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])


def op_steps(policy: Policy, channels: int = 3) -> list:
    """The steps after the crop, on a uint8 image of the crop size."""
    steps: list = []
    if policy.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if policy.vflip:
        steps.append(v2.RandomVerticalFlip())
    if policy.rot90:
        steps.append(v2.RandomChoice([Rotate90(k) for k in range(4)]))
    if policy.affine:
        steps.append(v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)))
    if policy.color:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2 if channels == 3 else None))
    if policy.trivial:
        steps.append(v2.TrivialAugmentWide())
    return steps


class Rotate90(torch.nn.Module):
    """Rotation by ``k`` quarter turns: exact (no interpolation, no corners filled)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, self.k, dims=(-2, -1)) if self.k else image
