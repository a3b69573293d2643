"""Decoded splits: every item decoded, converted to the model's channels and resized once (shorter side to
the preprocessing's ``resize_size``) into uint8 tensors, in worker processes; undecodable files are
reported by name (and why) and skipped, or rejected. Below the two places decoded images are kept (memory:
:mod:`thaw.data.images`; disk: :mod:`thaw.data.store`) and the feature cache, which all read from here.

Awkward images: 16-bit (and 32-bit, float) images are decoded at full depth and scaled per image, from
their darkest to their brightest pixel, to 0-255 (Pillow's own conversion would clip a 12-bit scan to
near white). Per-image min-max rather than the full 0-65535 range: a 12-bit scanner stored in 16 bits
would use only 1/16 of the range and come out nearly black. DICOM files go through their rescale
slope/intercept and an optional window (``--dicom-window``) first. Images over Pillow's
decompression-bomb limit (about 179 megapixels) are skipped by name; huge ones under it are decoded
reduced towards the model's input size (``thaw.core.decoding``, the reader shared with ``predict``).
An image more than ``MAX_ASPECT`` times longer than wide (or the reverse) is center-cropped to that ratio
before it is resized, so no strip of pixels becomes a tensor of gigabytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from thaw.core.decoding import DECODE_ERRORS, bounded, read_image, scale_to_8bit
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.data.sources import Item


@dataclass
class Decoded:
    """One split: uint8 image tensors [C, H, W] (a list in memory, or ``store.DiskImages`` read from a
    file image by image), labels (class indices, or 0/1 sequences for multi-label data), and the keys
    they came from."""

    keys: list[str]
    images: Sequence[torch.Tensor]
    labels: list


def open_image(
    item: Item, channels: int, window: tuple[float, float] | None = None, target: int | None = None
) -> Image.Image:
    """The image in ``L`` (``channels`` 1) or ``RGB``: EXIF rotation applied, the first frame of an
    animation, 16-bit depth scaled per image, the long side at most ``MAX_ASPECT`` times the short.
    DICOM files (``.dcm``): rescale slope/intercept applied, then ``window`` (center, width) if given.
    ``target``: the shorter side the model resizes to (a huge image is decoded reduced towards it)."""
    return load_image(item, channels, window, target)[0]


def load_image(
    item: Item, channels: int, window: tuple[float, float] | None = None, target: int | None = None
) -> tuple[Image.Image, bool]:
    """:func:`open_image`, and whether the source had more than 8 bits per channel (and was scaled)."""
    mode = "L" if channels == 1 else "RGB"
    if item.source is not None:  # a sample in a shard: its bytes read as the file's, or its array
        content = item.source.open()
        if not isinstance(content, np.ndarray):
            return read_image(content, channels, window, target)
        item = dataclasses.replace(item, array=content, source=None)
    if item.array is not None:
        array = np.asarray(item.array)
        if array.dtype == np.uint8:
            return bounded(Image.fromarray(array)).convert(mode), False
        numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        if array.ndim != 2 or not numeric:
            raise ThawError(
                f"{item.key}: in-memory images must be uint8, or 2-D greyscale numbers; got {array.dtype}"
            )
        return bounded(scale_to_8bit(array, item.key)).convert(mode), True
    return read_image(item.key, channels, window, target)


def resized(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """A uint8 [C, H, W] tensor with its shorter side at ``pre.resize_size``: what ``eval_transform``
    (center crop, normalize) and ``train_transform`` take."""
    interpolation = InterpolationMode(pre.interpolation)
    return F.resize(F.pil_to_tensor(image), [pre.resize_size], interpolation=interpolation, antialias=True)


def decode(
    items: list[Item],
    pre: Preprocessing,
    channels: int,
    strict: bool,
    window: tuple[float, float] | None = None,
    deep: list[str] | None = None,
    workers: int = 0,
) -> tuple[Decoded, list[str]]:
    """Decode and resize every item (in ``workers`` processes); returns the decoded split and the keys
    that failed (with why). ``deep`` collects the keys of images deeper than 8 bits (scaled per image)."""
    keys, images, labels, failed = [], [], [], []
    for i, image, why in decoded_items(items, pre, channels, strict, workers, window):
        if image is None:
            failed.append(f"{items[i].key} ({why})")
            continue
        if why == "scaled" and deep is not None:
            deep.append(items[i].key)
        keys.append(items[i].key)
        images.append(image)
        labels.append(items[i].label)
    return Decoded(keys, images, labels), failed


class _Decode(Dataset):
    """Item ``i`` decoded and resized: ``(i, image, "scaled" or "")``, ``(i, None, why)`` for an
    undecodable file, or ``(i, message, "error")`` for a problem to report as a ThawError; run in
    DataLoader workers."""

    def __init__(
        self,
        items: list[Item],
        pre: Preprocessing,
        channels: int,
        strict: bool,
        window: tuple[float, float] | None = None,
    ) -> None:
        self.items, self.pre, self.channels, self.strict = items, pre, channels, strict
        self.window = window

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            image, scaled = load_image(item, self.channels, self.window, self.pre.resize_size)
            return i, resized(image, self.pre), "scaled" if scaled else ""
        except DECODE_ERRORS as err:
            if self.strict:
                return (
                    i,
                    (
                        f"cannot decode image {item.key} ({_first_line(err)}); fix or remove it, or drop "
                        f"--strict-images to skip undecodable files"
                    ),
                    "error",
                )
            return i, None, _first_line(err)
        except ThawError as err:
            return i, str(err), "error"


def _as_list(batch: list) -> list:
    return batch


def decoded_items(
    items: list[Item],
    pre: Preprocessing,
    channels: int,
    strict: bool,
    workers: int = 0,
    window: tuple[float, float] | None = None,
):
    """``(index, uint8 image or None, note)`` for every item, in order, decoded in ``workers`` processes
    (0: in this one): decoding is what they speed up. ``note``: "scaled" for an image deeper than 8 bits,
    why for one that failed."""
    dataset = _Decode(items, pre, channels, strict, window)
    if workers > 0 and len(items) > 1:  # 32 images per hand-over: one at a time costs more than it saves
        chunks = DataLoader(dataset, batch_size=32, num_workers=min(workers, len(items)), collate_fn=_as_list)
        stream = (entry for chunk in chunks for entry in chunk)
    else:
        stream = (dataset[i] for i in range(len(dataset)))
    for i, image, note in stream:
        if note == "error":
            raise ThawError(image)
        yield int(i), image, note


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def images_fingerprint(items: list[Item]) -> str:
    """A hash of what the items' pixels are: each file's path, size and modification time (the pixels of
    an in-memory image). Part of every cache key built on these images."""
    digest = hashlib.blake2b(digest_size=16)
    for it in items:
        digest.update(it.key.encode())
        if it.array is not None:
            digest.update(np.ascontiguousarray(it.array).tobytes())
        elif it.source is not None:  # a sample in a shard (thaw.data.shards): its byte range
            digest.update(it.source.fingerprint().encode())
        else:
            stat = os.stat(it.key)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class Streamed(Sequence):
    """Images decoded (and resized) at every access from their files or shards, never kept: the
    ``images`` of a split under ``--image-store stream``, in memory only the items themselves."""

    def __init__(self, items: list[Item], pre: Preprocessing, channels: int, window=None) -> None:
        self.items, self.pre, self.channels, self.window = items, pre, channels, window

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):  # a list, as images[a:b] of a list of tensors gives
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self.items[i]
        try:
            image, _ = load_image(item, self.channels, self.window, self.pre.resize_size)
        except DECODE_ERRORS as err:
            raise ThawError(
                f"cannot decode image {item.key} ({_first_line(err)}); --image-store stream decodes every "
                f"image when it is used and cannot skip one: fix or remove it, or use --image-store disk"
            ) from None
        return resized(image, self.pre)


def streamed(items: list[Item], pre: Preprocessing, channels: int, window=None) -> Decoded:
    """A split under ``--image-store stream``: keys and labels now, images when they are used."""
    images = Streamed(items, pre, channels, window)
    return Decoded([it.key for it in items], images, [it.label for it in items])
