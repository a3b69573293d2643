"""``thaw curve DATA``: the label-budget learning curve, the recipe per budget and seed."""

from __future__ import annotations

import argparse

from thaw.cli.executor import executor, executor_flags
from thaw.cli.flags import config_flags, config_from_args, keys
from thaw.core.run_folder import study_folder
from thaw.studies.curve import parse_budgets, run_curve

CONSUMED = keys("*", drop=("data.labels_per_class", "data.label_fraction", "time_budget"))
"""Every run's settings but the label budget, which --budgets sets per run (and --time-budget, which is
--strategy auto's: the curve runs a named strategy)."""


def add_arguments(cu: argparse.ArgumentParser) -> None:
    cu.add_argument("data", help="the images, as for thaw fit")
    cu.add_argument(
        "--budgets",
        default="10%,25%,50%,100%",
        help="shares of each class's training labels (10%%,25%%) and/or labelled images per class "
        "(5,10,25) (default: 10%%,25%%,50%%,100%%)",
    )
    cu.add_argument("--seeds", type=int, default=3, help="runs per budget, seeds --seed, --seed+1, ... (3)")
    config_flags(cu, CONSUMED)
    executor_flags(cu)


def run(args: argparse.Namespace) -> None:
    budgets = parse_budgets(args.budgets)
    config = config_from_args(args)
    out = study_folder(config, "curve")
    print(f"curve folder: {out} (rerunning the same command there skips finished runs)")
    run_curve(config, budgets, args.seeds, out, quiet=True, executor=executor(args))
    print((out / "curve.md").read_text(), end="")
    print(f"written: {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}")
