"""``thaw evaluate RUN [DATA]``: score a trained run on labelled data, never on its training images."""

from __future__ import annotations

import argparse

from thaw.cli.flags import print_lines, warn
from thaw.core.config import DATA_FORMATS
from thaw.core.errors import SOME_FAILED, ThawError
from thaw.use.evaluate import evaluate_run
from thaw.use.reporting.console import evaluation_lines


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("run", help="run folder (or its model.safetensors)")
    e.add_argument(
        "data",
        nargs="?",
        help="labelled data; default: the run's own data, scored on its test split (else val) from "
        "split.csv. Other data: its test split, else val, else every image, less the run's training images",
    )
    e.add_argument("--format", choices=DATA_FORMATS, default="auto", help="data layout (detected)")
    e.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the flip and 4 small crops"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0, or :data:`SOME_FAILED` when some images could not be read (the metrics leave them out)."""
    e = evaluate_run(args.run, args.data, args.format, tta=args.tta, warn=warn)
    if e.skipped:
        warn(f"skipped {len(e.skipped)} undecodable image(s): {', '.join(e.skipped[:5])}")
    print_lines(evaluation_lines(e))
    if e.write_error:
        raise ThawError(f"could not write the evaluation ({e.write_error}); the metrics above are not saved")
    print(f"written: {e.path}")
    return SOME_FAILED if e.skipped else 0
