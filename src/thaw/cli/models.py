"""``thaw models``: the model zoo, with size, GFLOPs, ImageNet accuracy and whether the weights are here."""

from __future__ import annotations

import argparse
import json

from thaw.models.zoo import catalogue, parse_count
from thaw.use.reporting.console import models_table, show


def add_arguments(m: argparse.ArgumentParser) -> None:
    m.add_argument("--family", help="only this family or source (resnet, efficientnet, vit, timm, ...)")
    m.add_argument("--offline", action="store_true", help="only models whose weights are on this machine now")
    m.add_argument("--max-params", help="at most this many parameters: 25M, 500k, or 25 (millions)")
    m.add_argument(
        "--sort",
        default="family",
        help="family (default), name, params, gflops, top1, top5 (best first), input or file",
    )
    m.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")


def run(args: argparse.Namespace) -> None:
    max_params = parse_count(args.max_params) if args.max_params else None
    rows = catalogue(args.family, args.offline, max_params, args.sort)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    show(models_table(rows))
