"""``thaw fit DATA``: the two-phase recipe (or ``--strategy auto``, or ``--folds K``) on DATA."""

from __future__ import annotations

import argparse
from pathlib import Path

import thaw
from thaw.cli import strategies
from thaw.cli.executor import executor, executor_flags
from thaw.cli.flags import config_flags, config_from_args, log_format_flag, print_lines, settings
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.run_folder import study_folder
from thaw.core.strategies import read_plans
from thaw.studies.auto import fit_auto
from thaw.studies.folds import cross_validate
from thaw.use.reporting.console import folds_lines


def add_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument(
        "data",
        nargs="?",
        help="folder of class subfolders, folder with train/ val/ [test/], "
        "a .csv of path,label, a MedMNIST .npz, or builtin:digits",
    )
    f.add_argument("--config", help="a config.yaml (e.g. from a run folder); flags override it")
    f.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    f.add_argument(
        "--resume", metavar="RUN", help="continue the interrupted run in RUN (same as thaw resume)"
    )
    f.add_argument("--quiet", action="store_true", help="print only the result table")
    f.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="stratified K-fold cross-validation over train+val: K run folders under --out, cv.json with "
        "mean, sd and 95%% CI",
    )
    f.add_argument(
        "--plans",
        metavar="FILE",
        help="a YAML file listing the phase plans to run (PhasePlan settings): they replace the strategy's "
        "(default: none)",
    )
    log_format_flag(f)
    config_flags(f)
    executor_flags(f)


def run(args: argparse.Namespace) -> None:
    if args.resume:
        keys = [key for _, key, _, _ in settings(RunConfig())] + ["patience"]
        given = [k for k in keys if getattr(args, k, None) is not None] + (["DATA"] if args.data else [])
        if given or args.config:
            raise ThawError(
                f"--resume continues {args.resume} with its own config.yaml; drop the other settings "
                f"({', '.join(given + (['--config'] if args.config else []))})"
            )
        thaw.resume(args.resume, quiet=args.quiet)
        return
    if args.strategy == "help":
        strategies.run(args)
        return
    base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    if args.out is None and base.out and Path(base.out).exists():
        # rerunning a run's own config.yaml: a new run folder, never the old one
        base = override(base, {"out": None}, keep_none=True)
    args.plans = read_plans(args.plans) if args.plans else None  # checked here: one line, no run folder
    config = config_from_args(args, base)
    if args.print_config:
        print(config.to_yaml(), end="")
        return
    if not config.data.path:
        raise ThawError("no data given: thaw fit DATA (a folder, .csv or .npz), or data.path in --config")
    if args.folds is not None:
        folds(config, args)
        return
    if args.executor != "local" and config.strategy != "auto":
        raise ThawError("--executor ray runs a study's runs: give it with --folds K or --strategy auto")
    if config.strategy == "auto":
        fit_auto(config, quiet=args.quiet, executor=executor(args))
        return
    thaw.fit(config, quiet=args.quiet)


def folds(config: RunConfig, args: argparse.Namespace) -> None:
    out = study_folder(config, "cv")
    print(f"{args.folds}-fold cross-validation in {out} (rerun with --out {out} to finish it if interrupted)")
    result = cross_validate(config, args.folds, out, quiet=args.quiet, executor=executor(args))
    print_lines(folds_lines(result["summary"]))
    print(f"written: {out / 'cv.json'}")
