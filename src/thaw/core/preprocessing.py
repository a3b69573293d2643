"""What pretrained weights expect of an image: a torch-free leaf shared by ``data`` and ``models``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from thaw.core.decoding import MAX_DECODED_BYTES


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


def max_side(channels) -> int:
    """The largest ``resize_size`` a model file may ask for: a square image of that side, as float32
    tensors, within the decoder's cap (``MAX_DECODED_BYTES``); 60000 px would not fit in memory."""
    channels = channels if isinstance(channels, int) and 0 < channels <= 4 else 3
    return math.isqrt(MAX_DECODED_BYTES // (4 * channels))


def number(v) -> bool:
    """A finite int or float (not a bool, not text such as "0.5")."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def valid(pre, channels) -> bool:
    """Whether ``pre`` (a model file's preprocessing, as read) can be used for ``channels``-channel
    images: checked for type and range before any value is used: numbers (not text) for mean and std, one
    per channel, std positive; whole-number sizes, 0 < size <= resize_size <= :func:`max_side`."""
    if not isinstance(pre, dict):
        return False
    mean, std, size, resize = (pre.get(k) for k in ("mean", "std", "size", "resize_size"))

    def numbers(values) -> bool:
        return isinstance(values, list | tuple) and len(values) == channels and all(map(number, values))

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (
        numbers(mean)
        and numbers(std)
        and all(v > 0 for v in std)
        and whole(size)
        and whole(resize)
        and 0 < size <= resize <= max_side(channels)
        and pre.get("interpolation", "bilinear") in ("bilinear", "bicubic", "nearest")
    )
