"""Decoded splits into memory or onto disk, transforms that follow the weights, and data loaders.

Images are decoded, converted to the model's channels and resized (shorter side to the preprocessing's
``resize_size``) once, up front (:mod:`thaw.data.decoded`), and kept as uint8 tensors, in memory or in
the decoded-image store on disk (:mod:`thaw.data.store`): on a CPU, JPEG decoding each epoch costs more
than the small-image forward pass. Undecodable files are reported by name and skipped (or rejected).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from thaw.core.augment_policy import Policy
from thaw.core.augment_policy import parse as parse_augment
from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.data import augment
from thaw.data.decoded import Decoded, decode, streamed
from thaw.data.sources import Sources
from thaw.data.store import decode_to_disk


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
    decoded, failed, deep = {}, [], []
    for split in ("train", "val", "test"):
        items = sources.split(split)
        if items:
            if store == "stream":  # nothing decoded now: each image at every use
                decoded[split], bad = streamed(items, pre, channels, window), []
            elif store == "disk":
                decoded[split], bad = decode_to_disk(
                    items, pre, channels, strict, workers, window, deep, warn=warn
                )
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
