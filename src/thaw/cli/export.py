"""``thaw export RUN [--to onnx|torchscript|safetensors]``: a run's model for serving, with its metadata."""

from __future__ import annotations

import argparse
import sys

from thaw.use.export import FORMATS, check_on_run, export_run


class _Deprecated(argparse.Action):
    """The old spelling of ``--to`` (``--format``, which elsewhere means a data layout): still accepted for
    release more, with one line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: thaw export {option_string} is deprecated, use --to {values}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_arguments(x: argparse.ArgumentParser) -> None:
    x.add_argument("run", help="run folder (or its model.safetensors)")
    x.add_argument(
        "--to",
        choices=FORMATS,
        default="onnx",
        help="the kind of file to write: ONNX (checked against PyTorch), TorchScript (.pt), or the "
        "safetensors model file (default: onnx)",
    )
    x.add_argument(  # not shown: the old spelling, going in the next release
        "--format",
        dest="to",
        choices=FORMATS,
        action=_Deprecated,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    x.add_argument("--out", help="the file to write (default RUN/export/model.<format suffix>)")
    x.add_argument("--force", action="store_true", help="replace an existing file")
    x.add_argument(
        "--no-check", action="store_true", help="skip the parity check against PyTorch on the run's images"
    )


def run(args: argparse.Namespace) -> None:
    exported = export_run(args.run, args.to, args.out, args.force)
    print(f"written: {exported.path} and {exported.metadata_path.name} (class names, preprocessing)")
    if args.to == "onnx" and not args.no_check:
        print(check_on_run(exported, args.run))
