"""``thaw strategies``: the named strategies for ``--strategy``, one line each (also ``--strategy help``)."""

from __future__ import annotations

import argparse

from thaw.cli.flags import print_lines
from thaw.core.strategies import describe_strategies
from thaw.use.reporting.console import name_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> None:
    print_lines(name_lines(describe_strategies()))
