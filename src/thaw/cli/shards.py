"""``thaw shards DATA --out DIR``: DATA as WebDataset (or LitData) shards, with the split thaw would make."""

from __future__ import annotations

import argparse
from pathlib import Path

from thaw.cli.flags import SPLIT, config_flags, config_from_args
from thaw.data.shards import write

CONSUMED = SPLIT  # the files are copied as they are: no decoding, resizing or augmentation


def add_arguments(sh: argparse.ArgumentParser) -> None:
    sh.add_argument("data", help="the images, as for thaw fit (folders, a CSV, an .npz, builtin:digits, ...)")
    sh.add_argument("--out", dest="out_dir", required=True, help="a new or empty folder; never overwritten")
    sh.add_argument(
        "--shard-size",
        default="1000",
        help="images per shard (e.g. 1000) or bytes per shard (e.g. 64MB, 1GB) (default: 1000)",
    )
    sh.add_argument(
        "--shard-format",
        choices=("webdataset", "litdata"),
        default="webdataset",
        help="WebDataset tar files, or LitData's optimized format, a dataset per split (default: webdataset)",
    )
    config_flags(sh, CONSUMED)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    done = write(config.data, Path(args.out_dir), args.shard_size, args.shard_format)
    splits = ", ".join(f"{s} {n}" for s, n in done["images"].items() if n)
    print(
        f"{done['out']}: {done['shards']} shard(s), {done['bytes'] / 2**20:.1f} MiB ({splits}; "
        f"{done['classes']} classes; split: {done['split_origin']}), with classes.json and manifest.json"
    )
    return 0
