"""``thaw predict RUN|MODEL.onnx IMAGES...``: classify images with a trained run or an exported ONNX file."""

from __future__ import annotations

import argparse
import sys

from thaw.cli.flags import warn
from thaw.core.errors import NONE_READ, SOME_FAILED
from thaw.use.onnx_predictor import OnnxPredictor
from thaw.use.reporting import console


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("run", help="run folder, its model.safetensors, or an ONNX file from `thaw export`")
    r.add_argument("images", nargs="+", help="image files or folders")
    out = r.add_mutually_exclusive_group()
    out.add_argument(
        "--csv", action="store_true", help="CSV on stdout: path, prediction, confidence, p_<class>..., error"
    )
    out.add_argument("--jsonl", action="store_true", help="JSON lines on stdout, one object per file")
    r.add_argument("--top-k", type=int, metavar="K", help="also list the K most likely classes")
    r.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the flip and 4 small crops"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every image was predicted, :data:`SOME_FAILED` when some could not be read (each has an
    error row), :data:`NONE_READ` when none could."""
    if args.run.lower().endswith(".onnx"):  # onnxruntime only: torch is never imported
        predictor = OnnxPredictor(args.run)
    else:
        from thaw.use.predictor import Predictor  # torch: only for a run folder (an .onnx file needs none)

        predictor = Predictor.load(args.run, warn)
    preds = predictor.predict_paths(args.images, tta=args.tta)
    decision = predictor.decision()  # a binary threshold decides against the argmax: say which and why
    if not decision.startswith("argmax") and (args.csv or args.jsonl):
        print(f"note: decision: {decision}", file=sys.stderr)
    if args.jsonl:
        console.predictions_jsonl(preds, args.top_k)
    elif args.csv:
        console.predictions_csv(preds, predictor.class_names, args.top_k)
    else:
        console.show(console.predictions_table(preds, args.top_k, decision))
    failed = [p.path for p in preds if p.error]
    if failed:
        warn(f"could not read {len(failed)} file(s): {', '.join(failed[:5])}")
    return NONE_READ if len(failed) == len(preds) else SOME_FAILED if failed else 0
