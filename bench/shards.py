"""Streaming from shards: peak memory flat in the number of images, and the per-epoch cost against the
on-disk image store (issue 21's targets: 10x / 1x peak RSS within 1.1, epoch time at most 1.3x).

Generates class folders of JPEGs (``--images`` N and 10 N, ``--px`` pixels), writes each as WebDataset
shards (``thaw shards``), then runs every case in a fresh subprocess that reports its peak RSS
(``ru_maxrss``) and the time of one training epoch: ``stream`` reads the shards with ``--image-store
stream`` (each image read from its shard, decoded and augmented at every use); ``disk`` decodes the folder
into the on-disk image store first (not timed) and reads it back. An epoch is what ``thaw fit`` spends on
one: the augmented train loader and, unless ``--no-model``, a training step of MobileNetV2 (random
weights; the cost is the same) per batch, one thread each. The data-only time (the loader alone) is shown
too: without the model the comparison is decoding against reading decoded pixels.

    python bench/shards.py                              # N = 300, 256 px resize, 224 crops
    python bench/shards.py --images 8 --px 64 --crop 32 --resize 40  # tiny: proves it runs
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


def generate(root: Path, n: int, px: int) -> Path:
    """``n`` JPEGs of ``px`` pixels in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (max(1, px // 8), max(1, px // 8), 3), dtype=np.uint8)
        Image.fromarray(base).resize((px, px), Image.BILINEAR).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def child(mode: str, data: str, args: argparse.Namespace) -> None:
    """One case: the train split in ``mode`` (stream from shards, or the disk store), one epoch; JSON."""
    import torch

    from thaw import data as thaw_data
    from thaw.core.config import DataConfig
    from thaw.core.preprocessing import Preprocessing

    torch.set_num_threads(1)
    config = DataConfig(path=data, batch_size=32, val_fraction=0.2, test_fraction=0.0)
    pre = Preprocessing(
        size=args.crop, resize_size=args.resize, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    sources = thaw_data.discover(config)
    decoded = thaw_data.decode_sources(sources, pre, 3, store=mode)["train"]
    model = step = None
    if not args.no_model:
        import torchvision

        model = torchvision.models.mobilenet_v2(num_classes=2).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step(x, y):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    for i in range(min(8, len(decoded.images))):  # warm up (imports, first decodes) outside the timing
        decoded.images[i]
    loader = thaw_data.loader(decoded, thaw_data.train_transform(pre, config), config, True, 0)
    times = {}
    for name, train in (("data", None), ("epoch", step)):
        if name == "epoch" and train is None:
            continue
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            seen += len(y)
            if train is not None:
                train(x, y)
        times[name] = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": seen, "peak_mb": peak, **times}))


def run(mode: str, data: Path, home: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "THAW_HOME": str(home), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", mode, str(data)]
    cmd += ["--crop", str(args.crop), "--resize", str(args.resize)] + (
        ["--no-model"] if args.no_model else []
    )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} on {data} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="images of the 1x dataset (the 10x: 10 times)")
    p.add_argument("--px", type=int, default=384, help="side of the generated JPEGs")
    p.add_argument("--resize", type=int, default=256, help="shorter side images are resized to")
    p.add_argument("--crop", type=int, default=224, help="training crop")
    p.add_argument("--no-model", action="store_true", help="time the loader only, no training step")
    p.add_argument("--child", nargs=2, metavar=("MODE", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args)
        return
    from thaw.core.config import DataConfig
    from thaw.data import shards

    with tempfile.TemporaryDirectory(prefix="thaw-shards-") as tmp:
        tmp = Path(tmp)
        folders, written = {}, {}
        for scale in (1, 10):
            folders[scale] = generate(tmp / f"x{scale}", scale * args.images, args.px)
            config = DataConfig(path=str(folders[scale]), val_fraction=0.2, test_fraction=0.0)
            written[scale] = shards.write(config, tmp / f"shards{scale}", "64MB")["out"]
        print(
            f"{args.images} and {10 * args.images} JPEGs of {args.px} px; "
            f"{args.resize} px resize, {args.crop} crop"
        )
        print(f"{'case':14} {'train imgs':>10} {'peak RSS MB':>12} {'data s':>8} {'epoch s':>8}")
        results = {}
        for mode, scale, data in (
            ("stream", 1, written[1]),
            ("stream", 10, written[10]),
            ("disk", 10, folders[10]),
        ):
            r = results[mode, scale] = run(mode, Path(data), tmp / f"home-{mode}-{scale}", args)
            epoch = f"{r['epoch']:>8.2f}" if "epoch" in r else f"{'-':>8}"
            print(
                f"{mode + f' {scale}x':14} {r['images']:>10} {r['peak_mb']:>12.0f} {r['data']:>8.2f} {epoch}"
            )
        stream, disk = results["stream", 10], results["disk", 10]
        flat = stream["peak_mb"] / results["stream", 1]["peak_mb"]
        print(f"peak RSS streamed 10x / 1x: {flat:.2f} (target <= 1.1)")
        key = "data" if args.no_model else "epoch"
        ratio = stream[key] / disk[key]
        print(f"{key} time streamed from shards / disk store (10x): {ratio:.2f} (target <= 1.3)")
        print(f"data-only time streamed / disk store (10x): {stream['data'] / disk['data']:.2f}")


if __name__ == "__main__":
    main()
