"""Decoded images on disk (datasets larger than memory): the same pixels as in memory, written once, chosen
automatically above a size, decoded by worker processes, and a whole run on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder, tiny_config

from thaw import data as thaw_data
from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.core.preprocessing import Preprocessing
from thaw.data import store
from thaw.data.decoded import decode

PRE = Preprocessing(size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _sources(root: Path, per_class: int = 5):
    return thaw_data.discover(DataConfig(path=str(make_class_folder(root, per_class=per_class))))


def test_disk_store_holds_the_pixels_decoding_into_memory_gives(tmp_path, home):
    sources = _sources(tmp_path / "d")
    (tmp_path / "d" / "red" / "broken.png").write_bytes(b"not a png")
    items = sorted(sources.split("train") + [thaw_data.Item(str(tmp_path / "d/red/broken.png"), 0)], key=str)
    memory, failed = decode(items, PRE, 3, strict=False)
    disk, failed_disk = store.decode_to_disk(items, PRE, 3, strict=False)
    assert failed == failed_disk and len(failed) == 1  # the key, then why
    assert failed[0].startswith(f"{tmp_path / 'd/red/broken.png'} (cannot identify image")
    assert isinstance(disk.images, store.DiskImages) and disk.keys == memory.keys
    assert disk.labels == memory.labels
    assert all(torch.equal(a, b) for a, b in zip(memory.images, disk.images, strict=True))
    (folder,) = (home / "cache" / "images").iterdir()
    stamp = (folder / "images.u8").stat().st_mtime_ns
    again, _ = store.decode_to_disk(items, PRE, 3, strict=False)  # written once, then read
    assert (folder / "images.u8").stat().st_mtime_ns == stamp and len(again.images) == len(items) - 1
    with pytest.raises(ThawError, match="cannot decode image .*broken.png"):
        store.decode_to_disk(items[::-1], PRE, 3, strict=True)
    assert len(list((home / "cache" / "images").iterdir())) == 1  # no half-written store left


def test_workers_decode_the_same_images_in_the_same_order(tmp_path):
    items = _sources(tmp_path / "d").split("train")
    one, _ = decode(items, PRE, 3, strict=False)
    two, _ = decode(items, PRE, 3, strict=False, workers=2)
    assert one.keys == two.keys and all(
        torch.equal(a, b) for a, b in zip(one.images, two.images, strict=True)
    )


def test_auto_keeps_images_on_disk_above_the_threshold():
    assert store.choose("auto", 1000, PRE, 3, above_mb=1) == "disk"  # 1000 x 3 x 36 x 36 = 3.7 MB
    assert store.choose("auto", 1000, PRE, 3, above_mb=4096) == "memory"
    assert store.choose("disk", 1, PRE, 3, above_mb=4096) == "disk"
    assert store.choose("memory", 10**9, PRE, 3, above_mb=1) == "memory"


def test_loader_reads_disk_images_in_workers(tmp_path, home):
    items = _sources(tmp_path / "d").split("train")
    disk, _ = store.decode_to_disk(items, PRE, 3, strict=False)
    config = DataConfig(batch_size=4, num_workers=2)
    batches = list(thaw_data.loader(disk, thaw_data.eval_transform(PRE), config, shuffle=True, seed=1))
    assert sum(len(y) for _, y in batches) == len(items) and batches[0][0].shape[1:] == (3, 32, 32)


def test_a_run_on_disk_images_matches_one_in_memory(tmp_path, home):
    import thaw

    data = make_class_folder(tmp_path / "d", per_class=6)
    results = {}
    for where in ("memory", "disk"):
        config = tiny_config(data, tmp_path / where, **{"data.image_store": where, "phase2.epochs": 1})
        results[where] = thaw.fit(config, quiet=True).summary
    assert results["disk"].hardware["image_store"] == "disk"
    assert results["memory"].hardware["image_store"] == "memory"
    for phase in ("phase1", "phase2"):
        a, b = results["memory"].phases[phase].val, results["disk"].phases[phase].val
        assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, rel=1e-5)
    saved = json.loads((tmp_path / "disk" / "summary.json").read_text())
    assert saved["hardware"]["image_store"] == "disk"
    assert "image_store: disk" in (tmp_path / "disk" / "config.yaml").read_text()


def test_a_truncated_store_is_refused_in_one_line_and_written_again(tmp_path, home):
    items = _sources(tmp_path / "d").split("train")[:4]
    first, _ = store.decode_to_disk(items, PRE, 3, strict=False)
    (folder,) = (home / "cache" / "images").iterdir()
    pixels = folder / "images.u8"
    size = pixels.stat().st_size
    pixels.write_bytes(pixels.read_bytes()[: size // 2])  # as if the disk lost its tail
    warnings = []
    again, _ = store.decode_to_disk(items, PRE, 3, strict=False, warn=warnings.append)
    (warning,) = warnings
    assert f"holds {size // 2} bytes, its index {size}" in warning and warning.endswith("computing it again")
    assert pixels.stat().st_size == size
    assert all(torch.equal(a, b) for a, b in zip(first.images, again.images, strict=True))
