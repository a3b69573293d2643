"""``thaw compare DATA``: several strategies over several seeds on one split; a table and a verdict."""

from __future__ import annotations

import argparse

from thaw.cli.executor import executor, executor_flags
from thaw.cli.flags import config_flags, config_from_args, keys
from thaw.core.config import RunConfig
from thaw.core.errors import ThawError
from thaw.core.run_folder import study_folder
from thaw.studies.compare import Plan, compare, parse_strategies

CONSUMED = keys("*", drop=("strategy", "time_budget"))
"""Every run's settings but the strategy: --strategies names them (and auto, with its time budget, is a
search of its own, not a strategy to compare)."""


def add_arguments(co: argparse.ArgumentParser) -> None:
    co.add_argument("data", help="the images, as for thaw fit")
    co.add_argument(
        "--strategies", default="linear-probe,two-phase", help="comma-separated (thaw strategies lists them)"
    )
    co.add_argument("--seeds", type=int, default=3, help="seeds per strategy, from --seed on (default: 3)")
    co.add_argument("--config", help="a config.yaml; flags override it")
    co.add_argument("--dry-run", action="store_true", help="print the estimated cost and stop")
    # not shown: fit's --strategy, refused with a pointer to --strategies
    co.add_argument("--strategy", help=argparse.SUPPRESS)
    config_flags(co, CONSUMED)
    executor_flags(co)


def run(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise ThawError(f"--seeds {args.seeds} must be at least 1 (3 or more for a verdict on noise)")
    if args.strategy is not None:
        raise ThawError("thaw compare takes --strategies a,b,... (comma-separated), not --strategy")
    strategies = parse_strategies(args.strategies)
    config = config_from_args(args, RunConfig.from_yaml(args.config) if args.config else RunConfig())
    seeds = tuple(range(config.seed, config.seed + args.seeds))
    compare(
        Plan(config, strategies, seeds),
        study_folder(config, "compare", stamped=False),
        dry_run=args.dry_run,
        executor=executor(args),
    )
