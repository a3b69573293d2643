"""Peak memory of `thaw embed` on 1x and 10x the images: it must stay flat (images are decoded one at a
time, features are written to a memory-mapped file batch by batch).

    python bench/embed_memory.py [--base 300] [--size 96]

Generates PNGs under a temporary folder, runs `thaw embed` on each set in a subprocess with an empty
feature cache, and prints the peak RSS of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("a", "b")[i % 2]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def peak_rss_of_embed(data: Path, out: Path, home: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of `thaw embed` in a fresh process."""
    code = (
        "import resource, sys; from thaw.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    command = [
        sys.executable,
        "-c",
        code,
        "embed",
        str(data),
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "none",
        "--image-size",
        "64",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "THAW_HOME": str(home)})
    if done.returncode != 0:
        sys.exit(done.stderr)
    peak_kib = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK")))
    return peak_kib / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", type=int, default=300)
    p.add_argument("--size", type=int, default=96)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for factor in (1, 10):
            n = args.base * factor
            data = make_images(tmp / f"x{factor}", n, args.size)
            peak, seconds = peak_rss_of_embed(data, tmp / f"x{factor}.npz", tmp / f"home{factor}")
            rows.append((n, peak, seconds))
            print(
                f"{n:6d} images ({args.size}px PNG): peak RSS {peak:7.1f} MiB, {seconds:6.1f} s", flush=True
            )
        print(f"peak RSS 10x / 1x: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
