"""Pay for the frozen backbone once: the pooled features of every image, computed once and kept on disk.

A frozen backbone in eval mode is a fixed function of its input image, so its features can be computed
once per image (``views`` = 1: the deterministic eval transform) or once per augmented view (``views`` =
K: K seeded random crops/flips per training image) and reused by every epoch, every seed that shares the
views, every strategy that starts from the same phase 1, and ``thaw embed`` / ``thaw probe``.

The cache lives in ``$THAW_HOME/cache/features/<key>/`` (``~/.cache/thaw``): ``x.npy`` (float32
[N * views, D], memory-mapped, written batch by batch, so memory does not grow with the number of
images), ``labels.npy``, ``keys.json``, and ``meta.json``, written last: a folder without it is a
half-written cache (a killed run) and is rebuilt. The key hashes everything the features depend on:
the backbone's weights (their bytes), its input preprocessing and channels, the transform and views and
seed, the images (path, size and modification time of each file; the pixels of in-memory images) and
their labels (kept beside the features: a relabelled CSV must not read the old labels back).
Processes sharing the cache take turns per entry under a file lock (a :class:`thaw.core.cache.Entry`): one
computes, the others wait and read it; a corrupt entry is reported in one line and computed again. A stale
cache is never used: any change gives another key.
``rm -r ~/.cache/thaw/cache/features`` clears it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from thaw.core import cache
from thaw.core.decoding import DECODE_ERRORS
from thaw.core.errors import NothingRead
from thaw.core.preprocessing import Preprocessing
from thaw.data.decoded import Decoded, images_fingerprint, open_image, resized
from thaw.data.sources import Item

FORMAT = 1


@dataclass
class Features:
    """Pooled features of one split: ``x`` [N * views, D] (view-major per image: image i's views are rows
    i * views ... i * views + views - 1), labels per row ([N * views], or [N * views, K] of 0/1 for
    multi-label data), and the image keys (one per image)."""

    x: np.ndarray
    labels: np.ndarray
    keys: list[str]
    views: int
    seconds: float = 0.0  # spent computing them (0 when they came from the cache)
    cached: bool = False

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.x))  # a copy: the cache stays read-only


def cache_root() -> Path:
    return cache.root("features")


def backbone_fingerprint(backbone: nn.Module) -> str:
    """A hash of the backbone's parameters and buffers: two backbones with equal bytes share features."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Views(Dataset):
    """``views`` transformed copies of every image, stacked: [views, C, H, W]. Augmented views draw from a
    seed per (image, view), so the cache is reproducible. Images come decoded (``Decoded``) or are decoded
    here from ``items``, one at a time, so nothing holds the whole dataset in memory."""

    def __init__(
        self,
        transform: Callable,
        views: int,
        seed: int,
        decoded: Decoded | None = None,
        items: list[Item] | None = None,
        pre: Preprocessing | None = None,
        channels: int = 3,
    ) -> None:
        self.transform, self.views, self.seed = transform, views, seed
        self.decoded, self.items, self.pre, self.channels = decoded, items, pre, channels

    def __len__(self) -> int:
        return len(self.decoded.images) if self.decoded is not None else len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if self.decoded is not None:
            image, label = self.decoded.images[i], torch.as_tensor(self.decoded.labels[i])
        else:
            label = torch.as_tensor(self.items[i].label)  # a class index, or multi-label 0/1 values
            try:
                image = open_image(self.items[i], self.channels, None, self.pre.resize_size)
                image = resized(image, self.pre)
            except DECODE_ERRORS:
                size = self.pre.size
                return torch.zeros(self.views, self.channels, size, size), label, False
        out = []
        for v in range(self.views):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + i * 1009 + v)
                out.append(self.transform(image))
        return torch.stack(out), label, True


@torch.no_grad()
def compute(
    backbone: nn.Module,
    dataset: Views,
    keys: list[str],
    folder: Path,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    channels_last: bool = True,
) -> list[int]:
    """Run ``backbone`` (eval mode) over ``dataset`` and write the features to ``folder/x.npy`` batch by
    batch. Returns the indices of images that could not be decoded (their rows are left out).
    ``channels_last``: the backbone and the batches in that layout, as training runs them (a cold pass in
    the contiguous layout took 1.5x as long per image as an online epoch's forward; BENCHMARKS.md)."""
    was_training = backbone.training
    backbone.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=layout)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    x = None
    row, labels, failed, kept_keys, done = 0, [], [], [], 0
    for batch, y, ok in loader:
        n, v = batch.shape[:2]
        images = batch.flatten(0, 1)
        if images.dim() == 4:
            images = images.contiguous(memory_format=layout)
        feats = backbone(images).float().reshape(n, v, -1)
        for j in range(n):
            index = done + j
            if not bool(ok[j]):
                failed.append(index)
                continue
            if x is None:
                shape = (len(dataset) * v, feats.shape[-1])
                x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=shape)
            x[row : row + v] = feats[j].numpy()
            row += v
            labels += [y[j].tolist()] * v  # an int, or a multi-label row of 0/1
            kept_keys.append(keys[index])
        done += n
        if progress:
            progress(done, len(dataset))
    if x is None:
        raise NothingRead(f"none of the {len(dataset)} images could be decoded: no features to compute")
    x.flush()
    del x
    if row < len(dataset) * dataset.views:  # undecodable images: shrink the file to the rows written
        _shrink(folder / "x.npy", row)
    np.save(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    (folder / "keys.json").write_text(json.dumps(kept_keys))
    backbone.train(was_training)
    return failed


def _shrink(path: Path, rows: int) -> None:
    """Keep the first ``rows`` rows of the ``.npy`` array in ``path``, copied in chunks: memory stays flat."""
    full = np.load(path, mmap_mode="r", allow_pickle=False)
    tmp = path.with_name(path.stem + ".tmp.npy")
    trimmed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, full.shape[1]))
    for start in range(0, rows, 4096):
        stop = min(rows, start + 4096)
        trimmed[start:stop] = full[start:stop]
    trimmed.flush()
    del trimmed, full
    os.replace(tmp, path)


def features(
    backbone: nn.Module,
    items: list[Item],
    transform: Callable,
    transform_id: dict,
    pre: Preprocessing,
    channels: int,
    views: int = 1,
    seed: int = 0,
    decoded: Decoded | None = None,
    batch_size: int = 64,
    workers: int = 0,
    root: Path | None = None,
    warn: Callable[[str], None] = print,
    way_out: str | None = "--phase1 online",
    channels_last: bool = True,
) -> Features:
    """The features of ``items`` through ``backbone``: from the cache when it holds them, else computed
    (from ``decoded`` images if given, else decoded from disk one at a time) and cached. ``backbone`` may
    be any frozen module (a cut prefix: its rows are the flattened activations); ``way_out``: the flag
    that avoids the cache, named when the cache cannot be written (None: the command has none)."""
    identity = feature_identity(
        backbone, items, transform_id, pre, channels, views, seed, decoded, channels_last
    )
    entry = cache.Entry(root or cache_root(), identity, _read, "the feature cache", way_out)
    start = time.perf_counter()
    keys = decoded.keys if decoded is not None else [it.key for it in items]
    source = None if decoded is not None else items
    dataset = Views(transform, views, seed, decoded=decoded, items=source, pre=pre, channels=channels)

    def write(partial: Path) -> dict:
        failed = compute(backbone, dataset, keys, partial, batch_size, workers, channels_last=channels_last)
        return {"views": views, "failed": [keys[i] for i in failed]}

    result, computed = entry.get(write, warn)
    if computed:
        result.seconds, result.cached = time.perf_counter() - start, False
    return result


def feature_identity(
    backbone: nn.Module,
    items: list[Item],
    transform_id: dict,
    pre: Preprocessing,
    channels: int,
    views: int,
    seed: int,
    decoded: Decoded | None,
    channels_last: bool,
) -> dict:
    """Everything the features depend on (the cache key hashes it)."""
    return {
        "format": FORMAT,
        "backbone": backbone_fingerprint(backbone),
        "preprocessing": dataclasses.asdict(pre),
        "channels": channels,
        "transform": transform_id,
        "views": views,
        "seed": seed if views > 1 else None,
        "images": images_fingerprint(items),
        "labels": cache.digest(json.dumps([it.label for it in items])),
        "decoded_keys": None if decoded is None else cache.digest("\n".join(decoded.keys)),
        # the layouts' features differ at float rounding; a cache written before the key had a layout (in
        # the contiguous one) must not be read back as channels-last features
        "layout": "channels_last" if channels_last else "contiguous",
    }


def _read(folder: Path, meta: dict) -> Features:
    """The complete entry in ``folder``; raises ValueError when its rows, labels and keys disagree."""
    x = np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(folder / "labels.npy", allow_pickle=False)
    keys = json.loads((folder / "keys.json").read_text())
    if x.shape[0] != len(labels) or len(labels) != len(keys) * meta["views"]:
        raise ValueError(f"{x.shape[0]} rows, {len(labels)} labels, {len(keys)} keys")
    return Features(x, labels, keys, meta["views"], cached=True)
