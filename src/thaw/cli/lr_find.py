"""``thaw lr-find DATA``: the LR range test (Smith 2017; fastai's lr_find), a plot and a suggestion."""

from __future__ import annotations

import argparse
from pathlib import Path

from thaw.cli.flags import config_flags, config_from_args, keys, warn
from thaw.train.lr_find import lr_find
from thaw.use.reporting.figures import lr_find_plot

CONSUMED = keys(
    "data.*",
    "model.*",
    "strategy",  # the plan swept is the strategy's, with its settings
    "layer_decay",
    "gradual_*",
    "l2_sp",
    "lr",
    "lr_ratio",
    "unfreeze",
    "optimizer",
    "phase1_features",
    "cache_views",
    "phase2_features",
    "prefix_views",
    "bn_policy",
    "label_smoothing",
    "balance",
    "seed",
    "out",
    drop=("data.labels_per_class", "data.label_fraction", "data.label_seed", "data.unlabeled"),
)
"""The data, the model and the settings of the plan swept; not the label budget, pseudo-labels, AdaBN,
shift, monitor or logger, which belong to a run."""


def add_arguments(lf: argparse.ArgumentParser) -> None:
    lf.add_argument("data", help="the images, as for thaw fit")
    lf.add_argument(
        "--phase",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: the head on the frozen backbone; 2: the unfrozen backbone, the head fixed at --lr after a "
        "phase-1 head solved on cached features (default: 1)",
    )
    lf.add_argument(
        "--steps",
        type=int,
        help="mini-batches in the sweep (default: 100, or fewer if the training split is small: at most "
        "10 passes over it)",
    )
    lf.add_argument("--start-lr", type=float, default=1e-7, help="the sweep's first LR (default: 1e-7)")
    lf.add_argument("--end-lr", type=float, default=1.0, help="the sweep's last LR (default: 1)")
    config_flags(lf, CONSUMED)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    found = lr_find(
        config,
        args.phase,
        config.out,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        warn=warn,
        draw=lr_find_plot,
    )
    out = Path(config.out) if config.out else None
    print(f"written: {out / found.plot if out else found.plot} and its .json (the curve)")
