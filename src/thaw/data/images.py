"""Decoding images once into memory, transforms that follow the weights, and data loaders.

Images are decoded, converted to the model's channels and resized (shorter side to the preprocessing's
``resize_size``) once, up front, and kept as uint8 tensors: on a CPU, JPEG decoding each epoch costs more
than the small-image forward pass. Undecodable files are reported by name and skipped (or rejected).

Awkward images: 16-bit (and 32-bit, float) images are decoded at full depth and scaled per image, from
their darkest to their brightest pixel, to 0-255 (Pillow's own conversion would clip a 12-bit scan to
near white). Per-image min-max rather than the full 0-65535 range: a 12-bit scanner stored in 16 bits
would use only 1/16 of the range and come out nearly black. DICOM files go through their rescale
slope/intercept and an optional window (``--dicom-window``) first. Images over Pillow's
decompression-bomb limit (about 179 megapixels) are skipped by name; huge ones under it are decoded
reduced towards the model's input size (``thaw.decoding``, the reader shared with ``predict``).
An image more than ``MAX_ASPECT`` times longer than wide (or the reverse) is center-cropped to that ratio
before it is resized, so no strip of pixels becomes a tensor of gigabytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from thaw.augmentation import Policy
from thaw.augmentation import parse as parse_augment
from thaw.config import DataConfig
from thaw.data import augment
from thaw.data.sources import Item, Sources
from thaw.decoding import (  # noqa: F401 (re-exported: the readers' names as they were)
    DECODE_ERRORS,
    DICOM_EXTENSIONS,
    MAX_ASPECT,
    bounded,
    dicom_image,
    read_image,
    scale_to_8bit,
    to_8bit,
)
from thaw.errors import ThawError
from thaw.preprocessing import Preprocessing


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
                return i, (
                    f"cannot decode image {item.key} ({_first_line(err)}); fix or remove it, or drop "
                    f"--strict-images to skip undecodable files"
                ), "error"
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
        chunks = DataLoader(
            dataset, batch_size=32, num_workers=min(workers, len(items)), collate_fn=_as_list
        )
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


def _stderr(text: str) -> None:
    import sys

    print(f"warning: {text}", file=sys.stderr)


def decode_sources(
    sources: Sources,
    pre: Preprocessing,
    channels: int,
    strict: bool = False,
    warn=_stderr,
    window: tuple[float, float] | None = None,
    store: str = "memory",
    workers: int = 0,
) -> dict[str, Decoded]:
    """Decode every split, into memory or (``store`` ``disk``) into the decoded-image cache on disk, or
    (``stream``) not at all: each image is decoded when it is used (:class:`Streamed`); undecodable files
    are reported by name (and why) and skipped. A dataset that mixes 8-bit images with deeper ones
    (16-bit PNG/TIFF, DICOM) is reported: the deeper ones are scaled per image (minimum to maximum), the
    8-bit ones are not, so the two kinds may differ in contrast."""
    from thaw.data import store as disk

    decoded, failed, deep = {}, [], []
    for split in ("train", "val", "test"):
        items = sources.split(split)
        if items:
            if store == "stream":  # nothing decoded now: each image at every use
                decoded[split], bad = streamed(items, pre, channels, window), []
            elif store == "disk":
                decoded[split], bad = disk.decode_to_disk(items, pre, channels, strict, workers, window, deep)
            else:
                decoded[split], bad = decode(items, pre, channels, strict, window, deep, workers)
            failed += bad
    total = sum(len(d.images) for d in decoded.values())
    if deep and len(deep) < total:
        warn(
            f"{len(deep)} of {total} images have more than 8 bits per pixel (e.g. {deep[0]}) and the rest "
            f"8: each deeper image is scaled from its own minimum to maximum, the 8-bit ones are kept as "
            f"they are; convert them all to one depth if their contrast must match"
        )
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        warn(f"skipped {len(failed)} undecodable image(s): {shown} (use --strict-images to stop instead)")
    for split in ("train", "val"):
        if split not in decoded or not decoded[split].images:
            raise ThawError(f"{sources.name}: no decodable images in the {split} split")
    return decoded


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


def train_transform(pre: Preprocessing, config: DataConfig, policy: Policy | None = None, channels: int = 3):
    """The training transform of ``policy`` (default: what ``--augment`` names before any check)."""
    policy = policy or policy_of(config)
    return augment.transform(policy, pre, channels) if policy.ops else eval_transform(pre)


def policy_of(config: DataConfig) -> Policy:
    """The augmentation ``config.augment`` names (``auto``: the ``standard`` policy the check starts from)."""
    return parse_augment(config.augment, config.crop_scale_min, config.hflip)


def eval_transform(pre: Preprocessing) -> v2.Transform:
    """Deterministic: the images are already resized to ``resize_size``; center-crop and normalize."""
    return v2.Compose(
        [v2.CenterCrop(pre.size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    )


class ImageDataset(Dataset):
    """Decoded images through a transform. A key ``(i, seed)`` (from :class:`EpochSampler`) draws the
    random augmentation of item ``i`` from its own seed: the same in any worker, and after a resume."""

    def __init__(self, data: Decoded, transform: v2.Transform) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        if isinstance(key, tuple):
            i, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transform(self.data.images[i]), target(self.data.labels[i])
        return self.transform(self.data.images[key]), target(self.data.labels[key])


def target(label) -> int | torch.Tensor:
    """A class index as it is; a multi-label 0/1 sequence as a tensor, so a batch collates to [B, K]."""
    return label if isinstance(label, int) else torch.as_tensor(label)


class EpochSampler(Sampler):
    """A shuffled order that is a function of (seed, epoch) alone, with one augmentation seed per item.

    Lightning calls ``set_epoch`` before every epoch, so epoch ``k`` of a resumed run sees the same order
    and the same augmented images as epoch ``k`` of an uninterrupted one.

    Under DDP (``world`` > 1) every rank draws the same order and takes every ``world``-th item of it from
    position ``rank`` (the order is padded with its first items to a multiple of ``world``, as
    ``DistributedSampler`` does, so every rank takes as many steps): the ranks' batches ``k`` together
    are batch ``k`` of one process with ``world`` times the batch size, augmented the same way.
    """

    def __init__(
        self, n: int, seed: int, rank: int = 0, world: int = 1, weights: torch.Tensor | None = None
    ) -> None:
        self.n, self.seed, self.epoch, self.weights = n, seed, 0, weights
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g).tolist()
        else:  # --balance sampler: n draws with replacement, each class equally likely
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        if self.weights is not None:  # an image drawn twice gets two augmentations
            pairs = list(zip(order, seeds, strict=True))
        else:
            pairs = [(i, seeds[i]) for i in order]
        padded = (pairs * self.world)[: len(self) * self.world]
        return iter(padded[self.rank :: self.world])


class ShardSampler(Sampler):
    """Items ``rank``, ``rank + world``, ... in order, no padding: the ranks' shards together are the
    whole split once (validation under DDP; its metrics are summed over the ranks)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """``n / (classes * n_c)`` per class: each class weighs as much as the others in total."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp_min(1))


def sample_weights(labels: list[int]) -> torch.Tensor:
    """One weight per image, inverse to its class's count: a class-balanced draw."""
    y = torch.as_tensor(labels)
    return (1.0 / torch.bincount(y).float())[y].double()


def dataset_statistics(data: Decoded) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (0-1 scale) of the decoded training images."""
    total = torch.zeros(data.images[0].shape[0], dtype=torch.float64)
    squares, count = total.clone(), 0
    for img in data.images:
        x = img.double().flatten(1) / 255.0
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def loader(
    data: Decoded,
    transform: v2.Transform,
    config: DataConfig,
    shuffle: bool,
    seed: int = 0,
    balanced: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """Batches of (image, label). ``shuffle``: an :class:`EpochSampler` order seeded by ``seed``;
    ``balanced``: drawn with replacement, each class equally likely (``--balance sampler``); rank
    ``rank`` of ``world`` gets its shard (of the shuffled order, or of the split in order)."""
    n = len(data.images)
    weights = sample_weights(data.labels) if balanced else None
    sampler = EpochSampler(n, seed, rank, world, weights) if shuffle else ShardSampler(n, rank, world)
    # a last training batch of one image breaks batch norm in train mode; drop it (it is reshuffled anyway)
    drop_last = shuffle and len(sampler) % config.batch_size == 1
    return DataLoader(
        ImageDataset(data, transform),
        batch_size=config.batch_size,
        sampler=sampler if shuffle or world > 1 else None,
        # its own generator: creating an iterator would otherwise draw from the global RNG (the workers'
        # base seed), which dropout uses too, and a resumed run creates its iterators at other moments
        generator=torch.Generator().manual_seed(seed),
        num_workers=config.num_workers,
        drop_last=drop_last,
        persistent_workers=config.num_workers > 0,
    )
