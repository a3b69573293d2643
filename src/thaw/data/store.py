"""Decoded images on disk, for datasets larger than memory: every image is decoded and resized once (in
``--workers`` processes) into one uint8 file, and read back image by image with ``os.pread``.

Reads go through the page cache, not into the process: its memory stays flat however many images there
are (a memory map would count every page it touched as the process's own). The store lives beside the
feature cache, in ``$THAW_HOME/cache/images/<key>/`` (``~/.cache/thaw``): ``images.u8`` (the pixels,
image after image), ``index.npz`` (byte offset and [C, H, W] shape per image, labels) and ``meta.json``
(keys and the files that failed), written last. Processes sharing it take turns per entry under a file
lock (``thaw.cache``): one writes, the others wait and read. The key hashes the images (path, size,
modification time), the preprocessing and the channels, so a later run on the same data, or another
rank under DDP, reads the same store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from thaw import cache
from thaw.data.features import cache_root, images_fingerprint
from thaw.data.images import Decoded, decoded_items
from thaw.data.sources import Item
from thaw.errors import ThawError
from thaw.preprocessing import Preprocessing

FORMAT = 1


def store_root() -> Path:
    return cache_root().parent / "images"


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
) -> tuple[Decoded, list[str]]:
    """The decoded images of ``items`` from the store, written first if it does not hold them; ``deep``
    collects the keys of images deeper than 8 bits (scaled per image), as ``images.decode`` does."""
    root = root or store_root()
    identity = {
        "format": FORMAT,
        "images": images_fingerprint(items),
        "preprocessing": dataclasses.asdict(pre),
        "channels": channels,
        "window": list(window) if window else None,
    }
    folder = root / hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    found = _read(folder, repair=False)  # a complete entry needs no lock: it is never rewritten
    if found is None:
        try:
            with cache.locked(folder) as partial:  # another process writing this entry: wait, then read it
                if _read(folder) is None:
                    cache.sweep(root)
                    _write(partial, identity, items, pre, channels, strict, workers, window)
                    cache.publish(partial, folder)
        except OSError as err:
            raise ThawError(
                f"cannot write the decoded-image store in {root} ({err.strerror or err}): set THAW_HOME to "
                f"a writable folder with free space, or use --image-store memory"
            ) from err
        found = _read(folder, repair=False)
        if found is None:
            raise ThawError(
                f"the decoded-image store {folder} could not be read back; use --image-store memory"
            )
    if deep is not None:
        deep += json.loads((folder / "meta.json").read_text()).get("deep", [])
    return found


def _write(partial: Path, identity: dict, items, pre, channels, strict, workers, window) -> None:
    """Decode ``items`` into the staging folder ``partial``; ``meta.json`` is written last (with the keys
    of images scaled from more than 8 bits): an entry with it is complete."""
    partial.mkdir(parents=True)
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
    meta = {**identity, "keys": keys, "failed": failed, "deep": scaled}
    (partial / "meta.json").write_text(json.dumps(meta))


def _read(folder: Path, repair: bool = True) -> tuple[Decoded, list[str]] | None:
    """The entry in ``folder``, or None; ``repair`` (only with the entry's lock held): an incomplete one
    is removed, to be written again."""
    if not (folder / "meta.json").is_file():
        if folder.exists() and repair:
            shutil.rmtree(folder, ignore_errors=True)
        return None
    meta = json.loads((folder / "meta.json").read_text())
    index = np.load(folder / "index.npz")
    images = DiskImages(folder / "images.u8", index["offsets"], index["shapes"])
    return Decoded(list(meta["keys"]), images, index["labels"].tolist()), list(meta["failed"])
