"""Where a study's runs go (``--executor``): flags of fit (--folds, --strategy auto), compare and curve."""

from __future__ import annotations

import argparse

from thaw.studies.runner import Executor


def executor_flags(p: argparse.ArgumentParser) -> None:
    """Where a study's cells run (thaw.studies.runner.Executor)."""
    g = p.add_argument_group("where the study's runs go (each run one cell)")
    g.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="here one by one, or Ray tasks"
    )
    g.add_argument(
        "--address", help="Ray: auto (this machine's cluster) or HOST:PORT of a head (default: start one)"
    )
    g.add_argument(
        "--cell-cpus", type=int, help="CPUs (and torch threads) per run (default: Ray 1; local as is)"
    )
    g.add_argument("--cell-gpus", type=float, default=0.0, help="GPUs per run on Ray (default: 0)")


def executor(args: argparse.Namespace) -> Executor:
    return Executor(args.executor, args.address, args.cell_cpus, args.cell_gpus)
