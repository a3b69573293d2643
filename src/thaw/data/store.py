"""Decoded images on disk, for datasets larger than memory: every image is decoded and resized once (in
``--workers`` processes) into one uint8 file, and read back image by image with ``os.pread``.

Reads go through the page cache, not into the process: its memory stays flat however many images there
are (a memory map would count every page it touched as the process's own). The store lives beside the
feature cache, in ``$THAW_HOME/cache/images/<key>/`` (``~/.cache/thaw``): ``images.u8`` (the pixels,
image after image), ``index.npz`` (byte offset and [C, H, W] shape per image, labels) and ``meta.json``
(keys and the files that failed), written last. Processes sharing it take turns per entry under a file
lock (``thaw.core.cache``): one writes, the others wait and read. The key hashes the images (path, size,
modification time), the preprocessing and the channels, so a later run on the same data, or another
rank under DDP, reads the same store (a :class:`thaw.core.cache.Entry`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from thaw.core import cache
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.data.decoded import Decoded, decoded_items, images_fingerprint
from thaw.data.sources import Item

FORMAT = 1


def store_root() -> Path:
    return cache.root("images")


def estimated_mb(n_images: int, pre: Preprocessing, channels: int) -> float:
    """What ``n_images`` decoded images take in memory: square images at ``resize_size``."""
    return n_images * channels * pre.resize_size**2 / 2**20


def choose(store: str, n_images: int, pre: Preprocessing, channels: int, above_mb: int) -> str:
    """``memory`` or ``disk``: ``auto`` is disk when the decoded images would take over ``above_mb``."""
    if store != "auto":
        return store
    return "disk" if estimated_mb(n_images, pre, channels) > above_mb else "memory"


class DiskImages:
    """A read-only sequence of uint8 [C, H, W] tensors stored one after another in ``path``."""

    def __init__(self, path: Path, offsets: np.ndarray, shapes: np.ndarray) -> None:
        self.path, self.offsets, self.shapes = Path(path), offsets, shapes
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(i, slice):  # a list, as images[a:b] of a list of tensors gives
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._fd is None or self._pid != os.getpid():  # a DataLoader worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        shape = tuple(int(d) for d in self.shapes[i])
        size = int(np.prod(shape))
        data = os.pread(self._fd, size, int(self.offsets[i]))
        if len(data) != size:
            raise ThawError(f"the decoded-image store {self.path} is truncated; delete its folder")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(shape)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def decode_to_disk(
    items: list[Item],
    pre: Preprocessing,
    channels: int,
    strict: bool,
    workers: int = 0,
    window: tuple[float, float] | None = None,
    deep: list[str] | None = None,
    root: Path | None = None,
    warn: Callable[[str], None] = cache.warn_stderr,
) -> tuple[Decoded, list[str]]:
    """The decoded images of ``items`` from the store, written first if it does not hold them; ``deep``
    collects the keys of images deeper than 8 bits (scaled per image), as ``decoded.decode`` does."""
    identity = {
        "format": FORMAT,
        "images": images_fingerprint(items),
        "preprocessing": dataclasses.asdict(pre),
        "channels": channels,
        "window": list(window) if window else None,
    }
    entry = cache.Entry(
        root or store_root(), identity, _read, "the decoded-image store", way_out="--image-store memory"
    )
    (decoded, failed, scaled), _ = entry.get(
        lambda partial: _write(partial, items, pre, channels, strict, workers, window), warn
    )
    if deep is not None:
        deep += scaled
    return decoded, failed


def _write(partial: Path, items, pre, channels, strict, workers, window) -> dict:
    """Decode ``items`` into the staging folder ``partial``; returns what ``meta.json`` adds: the keys, the
    files that failed (with why) and the keys of images scaled from more than 8 bits."""
    offsets, shapes, keys, labels, failed, scaled, at = [], [], [], [], [], [], 0
    with open(partial / "images.u8", "wb") as out:
        for i, image, note in decoded_items(items, pre, channels, strict, workers, window):
            if image is None:
                failed.append(f"{items[i].key} ({note})")
                continue
            if note == "scaled":
                scaled.append(items[i].key)
            data = image.contiguous().numpy().tobytes()
            out.write(data)
            offsets.append(at)
            shapes.append(list(image.shape))
            keys.append(items[i].key)
            labels.append(items[i].label)
            at += len(data)
    np.savez(
        partial / "index.npz",
        offsets=np.asarray(offsets, dtype=np.int64),
        shapes=np.asarray(shapes, dtype=np.int64).reshape(-1, 3),
        labels=np.asarray(labels, dtype=np.int64),
    )
    return {"keys": keys, "failed": failed, "deep": scaled}


def _read(folder: Path, meta: dict) -> tuple[Decoded, list[str], list[str]]:
    """The complete entry in ``folder``: the decoded split, the files that failed, the keys of deeper
    images. Raises ValueError when its index and pixel file disagree (a truncated store)."""
    index = np.load(folder / "index.npz", allow_pickle=False)  # never unpickle, as every reader
    offsets, shapes, labels = index["offsets"], index["shapes"], index["labels"]
    keys = list(meta["keys"])
    if not len(offsets) == len(shapes) == len(labels) == len(keys):
        counts = f"{len(offsets)} offsets, {len(shapes)} shapes, {len(labels)} labels"
        raise ValueError(f"{counts}, {len(keys)} keys")
    size = int(offsets[-1] + np.prod(shapes[-1])) if len(offsets) else 0
    found = (folder / "images.u8").stat().st_size
    if found != size:
        raise ValueError(f"images.u8 holds {found} bytes, its index {size}")
    images = DiskImages(folder / "images.u8", offsets, shapes)
    return Decoded(keys, images, labels.tolist()), list(meta["failed"]), list(meta.get("deep", []))
