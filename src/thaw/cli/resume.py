"""``thaw resume RUN``: continue an interrupted run where it stopped (the same as ``thaw fit --resume``)."""

from __future__ import annotations

import argparse

import thaw
from thaw.cli.flags import log_format_flag


def add_arguments(rs: argparse.ArgumentParser) -> None:
    rs.add_argument("run", help="the run folder (runs/X or runs/X.incomplete)")
    rs.add_argument("--quiet", action="store_true", help="print only the result table")
    log_format_flag(rs)


def run(args: argparse.Namespace) -> None:
    thaw.resume(args.run, quiet=args.quiet)
