"""``thaw probe DATA``: how good are pretrained features for DATA, by linear and k-NN probes."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from thaw.cli.flags import FEATURES, config_flags, config_from_args, keys, warn
from thaw.core.files import write_atomic
from thaw.core.results import dumps
from thaw.studies.probe import parse_models, probe
from thaw.use.reporting.console import probe_table, show

CONSUMED = FEATURES | keys("seed")  # --seed: the folds and the probes' own draws


def add_arguments(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("data", help="the images, as for thaw fit")
    pr.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds (default: 5)")
    pr.add_argument("--json", help="also write the results to this JSON file")
    config_flags(pr, CONSUMED)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    models = parse_models(config.model.name, config.model)
    results = probe(config.data, models, folds=args.folds, seed=config.seed, warn=warn)
    show(probe_table(results, config.data.path))
    if args.json:
        write_atomic(Path(args.json), dumps([dataclasses.asdict(r) for r in results]))
        print(f"written: {args.json}")
