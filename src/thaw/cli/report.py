"""``thaw report RUN``: (re)build a run folder's report.html, one self-contained page."""

from __future__ import annotations

import argparse
from pathlib import Path

from thaw.use.reporting.html import write_report


def add_arguments(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("run", help="a finished run folder made by `thaw fit`")


def run(args: argparse.Namespace) -> None:
    print(f"written: {write_report(Path(args.run))}")
