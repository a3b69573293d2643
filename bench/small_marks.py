"""A synthetic small-mark tile set, real image files on disk, seeded: 6 classes, about 70% defect-free.

    python bench/small_marks.py OUT [--images 900] [--seed 0]

Each tile is a 200x200 RGB picture of a glazed tile: a base colour, a smooth low-frequency mottle and
fine grain noise. A defective tile carries one small mark (about 0.5-1.5% of its area) at a random place:
``spot`` (a dark round spot), ``scratch`` (a thin straight line), ``crack`` (a thin jagged polyline),
``chip`` (a bright chipped corner), ``stain`` (a faint brownish blotch). ``clean`` tiles have none.
The label is the mark, so a crop or a zoom that cuts the mark out destroys the label while a flip keeps
it: the shape of the hidden industrial defect set that issue 25 was measured on (1,344 tiles, 71% clean).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("clean", "spot", "scratch", "crack", "chip", "stain")
CLEAN_SHARE = 0.7
SIDE = 200


def tile(rng: np.random.Generator) -> Image.Image:
    """A defect-free tile: base colour, low-frequency mottle, grain."""
    base = rng.uniform(150, 230, size=3)
    coarse = rng.normal(0, 1, size=(6, 6, 1))
    mottle = (
        np.asarray(
            Image.fromarray(((coarse[..., 0] + 3) * 40).clip(0, 255).astype(np.uint8)).resize(
                (SIDE, SIDE), Image.BICUBIC
            ),
            np.float32,
        )[..., None]
        / 255.0
        - 0.5
    )
    grain = rng.normal(0, 4, size=(SIDE, SIDE, 1))
    pixels = base + 30 * mottle + grain
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def mark(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One small mark of ``kind`` at a random place."""
    draw = ImageDraw.Draw(image)
    x, y = rng.uniform(20, SIDE - 20, size=2)
    if kind == "spot":
        r = rng.uniform(5, 9)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.uniform(20, 60, 3)))
    elif kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(25, 45)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line((x - dx, y - dy, x + dx, y + dy), fill=(70, 70, 70), width=2)
    elif kind == "crack":
        points = [(x, y)]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(6):
            angle += rng.normal(0, 0.7)
            x, y = x + 6 * np.cos(angle), y + 6 * np.sin(angle)
            points.append((x, y))
        draw.line(points, fill=(40, 35, 30), width=1)
    elif kind == "chip":
        r = rng.uniform(8, 13)
        draw.polygon(
            [(x - r, y), (x, y - r * 0.6), (x + r * 0.8, y + r * 0.3), (x - r * 0.2, y + r)],
            fill=(250, 250, 245),
            outline=(120, 120, 120),
        )
    elif kind == "stain":
        r = rng.uniform(9, 14)
        layer = Image.new("L", image.size, 0)
        ImageDraw.Draw(layer).ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=110)
        layer = layer.filter(ImageFilter.GaussianBlur(3))
        image = Image.composite(Image.new("RGB", image.size, (120, 80, 40)), image, layer)
    return image


def make(folder: Path, images: int = 900, seed: int = 0) -> Path:
    """Write the set under ``folder/<class>/*.png`` (once; ``folder/done`` marks it finished)."""
    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(seed)
    n_clean = round(CLEAN_SHARE * images)
    per_defect = (images - n_clean) // (len(CLASSES) - 1)
    counts = {"clean": n_clean, **{c: per_defect for c in CLASSES[1:]}}
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            image = tile(rng)
            if name != "clean":
                image = mark(image, name, rng)
            image.save(folder / name / f"{k:04d}.png")
    (folder / "done").write_text("")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make(Path(args.out), args.images, args.seed), file=sys.stdout)


if __name__ == "__main__":
    main()
