"""Soak: `thaw predict` over many generated images, with memory sampled as it goes.

    python bench/predict_soak.py                  # 10,000 images of 64x64 px, mobilenet_v3_small at 64 px
    python bench/predict_soak.py --images 2000 --size 128

Prints images/s and the process's resident memory (RSS) after every 1,000 images: a flat RSS shows that
prediction streams (decode, classify, drop, 64 files at a time) instead of holding every image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thaw.core.config import ModelConfig
from thaw.models import build_classifier, save_model
from thaw.use.predictor import Predictor


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64, help="side of the generated PNGs")
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--image-size", type=int, default=64, help="model input size")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for i in range(args.images):
            pixels = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
            folder = root / "images" / f"{i // 1000:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
        made = time.perf_counter() - start
        model = build_classifier(ModelConfig(name=args.model, weights="none"), 2, ["a", "b"], args.image_size)
        save_model(model.eval(), root / "model.safetensors")
        predictor = Predictor.load(root / "model.safetensors")
        print(f"{args.images} PNGs of {args.size}x{args.size} px written in {made:.0f}s; model {args.model}")
        print(f"{'images':>8} {'images/s':>9} {'RSS MiB':>8}")
        start, n, samples = time.perf_counter(), 0, []
        print(f"{0:>8} {'-':>9} {rss_mib():>8.0f}")
        for _result in predictor.iter_paths([root / "images"]):
            n += 1
            if n % 1000 == 0:
                samples.append(rss_mib())
                print(f"{n:>8} {n / (time.perf_counter() - start):>9.0f} {samples[-1]:>8.0f}")
        seconds = time.perf_counter() - start
        print(
            f"total: {n} images in {seconds:.1f}s = {n / seconds:.0f} images/s; RSS after the first 1000: "
            f"{samples[0]:.0f} MiB, at the end: {samples[-1]:.0f} MiB (max {max(samples):.0f})"
        )


if __name__ == "__main__":
    main()
