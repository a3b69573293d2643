"""Peak memory of decoded images in memory vs on disk as the dataset grows 10x, and the speedup of decoding
in worker processes.

Generates class folders of JPEGs (``--images`` N and 10 N, 384 px), then, each in a fresh subprocess,
decodes the training images the way ``thaw fit`` does (``--image-store memory`` or ``disk``, 224 px
crops from a 256 px resize, MobileNetV2's preprocessing) and runs one epoch of the augmented training
loader over them; the subprocess reports its peak RSS (``ru_maxrss``). Then the disk store of the 10 N
dataset is built with ``--workers 0`` and ``--workers 2`` (fresh caches) and the decoding times compared,
and again for ``--large-images`` photographs of ``--large-px`` (2000 px: camera-sized JPEGs, where decoding
is the bottleneck). The workers runs keep the machine's thread settings (``workers 0`` may resize with
every intra-op thread), so the ratio is what a user sees.

    python bench/stream_memory.py                 # N = 150: about 2 minutes on 2 cores
    python bench/stream_memory.py --images 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PRE = dict(size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def generate(root: Path, n: int, size: int = 384, grain: float = 0.0) -> Path:
    """``n`` JPEGs of ``size`` px in two class folders; ``grain``: sd of pixel noise added, so that large
    ones carry a photograph's detail (and its decoding cost) rather than a smooth gradient's."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        if grain:
            noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, grain, (size, size, 3)).astype(
                np.float32
            )
            img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        img.save(folder / f"{i:06d}.jpg", quality=90)
    return root


def child(mode: str, data: str, workers: int) -> None:
    """One measurement: decode the training split into ``mode``, one training epoch; print JSON."""
    import torch

    from thaw import data as thaw_data
    from thaw.core.config import DataConfig
    from thaw.core.preprocessing import Preprocessing

    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    config = DataConfig(path=data, batch_size=32, num_workers=0, val_fraction=0.1, test_fraction=0.0)
    sources = thaw_data.discover(config)
    pre = Preprocessing(**PRE)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    decoded = thaw_data.decode_sources(sources, pre, 3, store=mode, workers=workers)
    decode_s = time.perf_counter() - start
    loader = thaw_data.loader(decoded["train"], thaw_data.train_transform(pre, config), config, True, 0)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    epoch_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "images": seen,
                "peak_mb": peak / 1024,
                "before_mb": before / 1024,
                "decode_s": decode_s,
                "epoch_s": epoch_s,
            }
        )
    )


def run(mode: str, data: Path, home: Path, workers: int = 0, one_thread: bool = True) -> dict:
    env = {**os.environ, "THAW_HOME": str(home)}
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", mode, str(data), "--workers", str(workers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=150, help="images of the 1x dataset (the 10x has 10 times)")
    p.add_argument("--large-images", type=int, default=120, help="JPEGs of the large-photo workers run")
    p.add_argument("--large-px", type=int, default=2000, help="side of the large photos")
    p.add_argument("--child", nargs=2, metavar=("MODE", "DATA"), help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.workers)
        return
    with tempfile.TemporaryDirectory(prefix="thaw-stream-") as tmp:
        tmp = Path(tmp)
        sets = {1: generate(tmp / "x1", args.images), 10: generate(tmp / "x10", 10 * args.images)}
        print(f"datasets: {args.images} and {10 * args.images} JPEGs of 384 px; decoded at 256 px, 224 crops")
        head = ("store", "scale", "train imgs", "peak RSS MB", "over start MB", "decode s")
        print(f"{head[0]:8} {head[1]:>5} {head[2]:>10} {head[3]:>12} {head[4]:>14} {head[5]:>9}")
        peaks = {}
        for mode in ("memory", "disk"):
            for scale, data in sets.items():
                r = run(mode, data, tmp / f"home-{mode}-{scale}")
                peaks[mode, scale] = r["peak_mb"]
                over = r["peak_mb"] - r["before_mb"]
                print(
                    f"{mode:8} {scale:>4}x {r['images']:>10} {r['peak_mb']:>12.0f} {over:>14.0f} "
                    f"{r['decode_s']:>9.1f}"
                )
        for mode in ("memory", "disk"):
            print(f"peak RSS 10x / 1x, {mode}: {peaks[mode, 10] / peaks[mode, 1]:.2f}")
        large = generate(tmp / "large", args.large_images, args.large_px, grain=12.0)
        runs = (
            (sets[10], f"{10 * args.images} JPEGs of 384 px"),
            (large, f"{args.large_images} JPEGs of {args.large_px} px"),
        )
        for data, what in runs:
            times = {
                w: run("disk", data, tmp / f"home-w{w}-{data.name}", w, False)["decode_s"] for w in (0, 2)
            }
            print(
                f"decoding {what} into the disk store: workers 0 {times[0]:.1f}s, workers 2 {times[2]:.1f}s: "
                f"speedup {times[0] / times[2]:.2f}x (os.cpu_count() = {os.cpu_count()})"
            )


if __name__ == "__main__":
    main()
