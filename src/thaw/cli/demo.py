"""``thaw demo``: offline, ImageNet MobileNetV2 fine-tuned on handwritten digits."""

from __future__ import annotations

import argparse
import sys

from thaw.cli.flags import log_format_flag, print_lines
from thaw.studies import demo
from thaw.use.reporting.console import phase_lines


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", help="run folder (default runs/digits-mobilenet_v2-<time>)")
    d.add_argument("--seed", type=int, default=0, help="random seed (0)")
    d.add_argument("--quiet", action="store_true", help="print only the result table")
    log_format_flag(d)


def run(args: argparse.Namespace) -> None:
    if args.log_format == "json":  # stdout is the run's events: the rest goes to stderr
        demo.run(args.out, args.seed, args.quiet, say=lambda text: print(text, file=sys.stderr))
        return
    summary = demo.run(args.out, args.seed, args.quiet).summary
    print()
    print_lines(phase_lines(summary))
