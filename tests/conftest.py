from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> None:
    """A real PNG: a coloured square on noise, so classes are learnable but not identical."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    a, b = rng.integers(4, size // 2, size=2)
    pixels[a : a + size // 2, b : b + size // 2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_class_folder(root: Path, per_class: int = 8, classes=("red", "blue")) -> Path:
    for c in classes:
        for i in range(per_class):
            make_image(root / c / f"{c}_{i}.png", COLOURS[c], seed=zlib.crc32(f"{c}/{i}".encode()))
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "shapes")


@pytest.fixture
def split_folders(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    make_class_folder(root / "train", per_class=8)
    make_class_folder(root / "val", per_class=3)
    make_class_folder(root / "test", per_class=3)
    return root


class _Evil:
    """Unpickling this calls print: a stand-in for code hidden in a weights file."""

    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture
def evil_pickle(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    return path


def shared_or_skip(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared on development and CI machines)")
    return path


def tiny_flags(size: int = 32, batch: int = 8) -> list[str]:
    """The command-line flags of a tiny CPU run: MobileNetV3-small, random weights, small images."""
    return [
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "none",
        "--image-size",
        str(size),
        "--batch-size",
        str(batch),
    ]


def tiny_config(data, out, **changes):
    """The same tiny run as a config: 2 online-budget epochs of phase 1 (cached by default), 1 of phase 2."""
    import thaw
    from thaw.core.config import override

    return override(
        thaw.RunConfig(),
        {
            "data.path": str(data),
            "data.image_size": 32,
            "data.batch_size": 8,
            "model.name": "mobilenet_v3_small",
            "model.weights": "none",
            "phase1.epochs": 2,
            "phase2.epochs": 1,
            "out": str(out),
            **changes,
        },
    )
