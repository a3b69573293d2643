"""``thaw embed DATA --out FILE``: the frozen backbone's features of every image, with labels and splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from thaw.cli.flags import FEATURES, config_flags, config_from_args, warn
from thaw.core.errors import SOME_FAILED
from thaw.studies.probe import check_out, embed, write_embedding

CONSUMED = FEATURES


def add_arguments(em: argparse.ArgumentParser) -> None:
    em.add_argument("data", help="the images, as for thaw fit")
    em.add_argument(
        "--out", dest="out_file", required=True, help="a .npz (or .parquet) file; never overwritten"
    )
    config_flags(em, CONSUMED)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = check_out(Path(args.out_file))  # before any work
    e = embed(config.data, config.model, warn=warn)
    write_embedding(e, out)
    splits = ", ".join(f"{s} {e.splits.count(s)}" for s in dict.fromkeys(e.splits))
    print(
        f"{out}: {e.features.shape[0]} images x {e.features.shape[1]} features ({splits}) in {e.seconds:.1f}s"
    )
    return SOME_FAILED if e.failed else 0
