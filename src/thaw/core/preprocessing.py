"""What pretrained weights expect of an image: a torch-free leaf shared by ``data`` and ``models``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    """What the pretrained weights expect: eval is resize(shorter side) -> center crop -> normalize."""

    size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def at_size(self, size: int | None) -> Preprocessing:
        """The same preprocessing at another crop size, keeping the weights' crop ratio."""
        if size is None or size == self.size:
            return self
        return dataclasses.replace(self, size=size, resize_size=round(size * self.resize_size / self.size))

    def for_channels(self, channels: int) -> Preprocessing:
        if channels == len(self.mean):
            return self
        mean, std = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return dataclasses.replace(self, mean=(mean,) * channels, std=(std,) * channels)
