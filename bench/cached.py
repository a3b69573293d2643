"""Cached phase 1 vs online phase 1, side by side in one process, on real data from ../shared/data.

    python bench/cached.py speed [--dataset neu]        # wall time: online (10 epochs) vs cached vs 1 forward
    python bench/cached.py accuracy [--seeds 0 1 2]     # phase 1 cached vs online vs scikit-learn probe
    python bench/cached.py two-phase [--seeds 0]        # the whole recipe from each head
    python bench/cached.py cold [--dataset neu]         # a cold feature pass, by where its time goes

Every figure is printed as it is measured and written to bench/out/cached-<mode>-<time>.json. The cache
goes to a fresh THAW_HOME for each cached run, so "cached" includes computing the features.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "hymenoptera": {"data.path": str(SHARED / "hymenoptera")},
    "neu": {"data.path": str(SHARED / "neu-surface-defects")},
    "breastmnist": {"data.path": str(SHARED / "breastmnist.npz"), "data.hflip": True},
}
BASE = {"model.name": "mobilenet_v2", "model.weights": "IMAGENET1K_V1", "data.image_size": 128}


def config(dataset: str, out: Path, **changes):
    import thaw
    from thaw.core.config import override

    return override(thaw.RunConfig(), {**BASE, **DATASETS[dataset], "out": str(out), **changes})


def fit(cfg, fresh_cache: bool = True):
    """A run; with ``fresh_cache`` its feature cache starts empty (the cost of computing it is counted)."""
    import thaw

    home = os.environ.get("THAW_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        if fresh_cache:
            os.environ["THAW_HOME"] = tmp
        try:
            start = time.perf_counter()
            result = thaw.fit(cfg, quiet=True)
            return result.summary, time.perf_counter() - start
        finally:
            if home is None:
                os.environ.pop("THAW_HOME", None)
            else:
                os.environ["THAW_HOME"] = home


def one_forward_pass(dataset: str) -> float:
    """Seconds of one eval-mode forward pass of the backbone over train + val (images already decoded)."""
    import torch

    from thaw.data import decode_sources, discover, eval_transform, loader
    from thaw.models import build_classifier

    cfg = config(dataset, Path("unused"))
    sources = discover(cfg.data)
    model = build_classifier(cfg.model, len(sources.class_names), sources.class_names, cfg.data.image_size)
    decoded = decode_sources(sources, model.preprocessing, 3, warn=lambda *_: None)
    backbone = model.backbone.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for split in ("train", "val"):
            for x, _ in loader(decoded[split], eval_transform(model.preprocessing), cfg.data, shuffle=False):
                backbone(x)
    return time.perf_counter() - start


def sklearn_probe(dataset: str) -> dict:
    """scikit-learn logistic regression on the same frozen features (eval transform, no augmentation),
    standardised, C chosen on validation accuracy; test metrics (val where there is no test split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from thaw.studies.probe import embed

    cfg = config(dataset, Path("unused"))
    start = time.perf_counter()
    e = embed(cfg.data, cfg.model, warn=lambda *_: None)
    splits = np.asarray(e.splits)
    part = {s: (e.features[splits == s], e.labels[splits == s]) for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(part["train"][0])
    best = None
    for c in np.logspace(-4, 2, 13):
        clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(part["train"][0]), part["train"][1])
        acc = clf.score(scaler.transform(part["val"][0]), part["val"][1])
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    _, c, clf = best
    split = "test" if len(part["test"][1]) else "val"
    x, y = scaler.transform(part[split][0]), part[split][1]
    probs = clf.predict_proba(x)
    auc = roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2 else roc_auc_score(y, probs, multi_class="ovr")
    return {
        "split": split,
        "accuracy": float(clf.score(x, y)),
        "macro_f1": float(f1_score(y, clf.predict(x), average="macro")),
        "auc": float(auc),
        "C": float(c),
        "seconds": time.perf_counter() - start,
    }


def metrics(result, split: str) -> dict:
    m = result.on(split) or result.val
    return {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "auc": m.auc}


def speed(args, out: Path, rows: list) -> None:
    """Phase 1 alone, 10 epochs' budget (online runs them all: patience 10), vs cached, vs one forward."""
    for dataset in args.datasets:
        forward = one_forward_pass(dataset)
        common = {"phase1.epochs": 10, "phase1.patience": 10, "phase2.epochs": 0}
        online, online_s = fit(config(dataset, out / f"{dataset}-online", phase1_features="online", **common))
        cached, cached_s = fit(config(dataset, out / f"{dataset}-cached", phase1_features="cached", **common))
        p1o, p1c = online.phases["phase1"], cached.phases["phase1"]
        row = {
            "dataset": dataset,
            "one_forward_train_val_s": round(forward, 1),
            "online_phase1_s": p1o.seconds,
            "cached_phase1_s": p1c.seconds,
            "online_run_s": round(online_s, 1),
            "cached_run_s": round(cached_s, 1),
            "online_over_cached": round(p1o.seconds / p1c.seconds, 2),
            "cached_over_one_forward": round(p1c.seconds / forward, 2),
            "online_val_acc": p1o.val.accuracy,
            "cached_val_acc": p1c.val.accuracy,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)


def accuracy(args, out: Path, rows: list) -> None:
    """Phase 1 only: cached (K = 1) vs online, per seed, beside the scikit-learn probe."""
    for dataset in args.datasets:
        probe = sklearn_probe(dataset)
        print(json.dumps({"dataset": dataset, "sklearn_probe": probe}), flush=True)
        per_mode: dict[str, list] = {"cached": [], "online": []}
        for seed in args.seeds:
            for mode in per_mode:
                summary, seconds = fit(
                    config(
                        dataset,
                        out / f"{dataset}-{mode}-{seed}",
                        phase1_features=mode,
                        seed=seed,
                        **{"phase2.epochs": 0},
                    )
                )
                p1 = summary.phases["phase1"]
                split = "test" if p1.test is not None else "val"
                row = {
                    "dataset": dataset,
                    "mode": mode,
                    "seed": seed,
                    "split": split,
                    **metrics(p1, split),
                    "val_accuracy": p1.val.accuracy,
                    "phase1_s": p1.seconds,
                    "solver": p1.solver,
                }
                per_mode[mode].append(row)
                print(json.dumps(row), flush=True)
        for mode, got in per_mode.items():
            summary_row = {"dataset": dataset, "mode": mode, "sklearn_probe": probe}
            for k in ("accuracy", "macro_f1", "auc", "phase1_s"):
                values = [r[k] for r in got]
                summary_row[k] = [
                    statistics.fmean(values),
                    statistics.stdev(values) if len(values) > 1 else 0.0,
                ]
            rows.append(summary_row)
            print("MEAN", json.dumps(summary_row), flush=True)


def two_phase(args, out: Path, rows: list) -> None:
    """The whole default recipe from the cached (converged) head vs from the online head."""
    for dataset in args.datasets:
        for seed in args.seeds:
            for mode in ("cached", "online"):
                summary, seconds = fit(
                    config(dataset, out / f"{dataset}-2p-{mode}-{seed}", phase1_features=mode, seed=seed)
                )
                split = "test" if summary.final.test is not None else "val"
                row = {
                    "dataset": dataset,
                    "mode": mode,
                    "seed": seed,
                    "final_phase": summary.final_phase,
                    "split": split,
                    "seconds": round(seconds, 1),
                }
                for name, r in summary.phases.items():
                    row[name] = {"val_accuracy": r.val.accuracy, **metrics(r, split), "seconds": r.seconds}
                rows.append(row)
                print(json.dumps(row), flush=True)


def cold(args, out: Path, rows: list) -> None:
    """Where a cold feature pass spends its time: decoding, then the backbone over every split in the
    layout the feature cache uses, beside the same pass in channels-last and the forward of one online
    phase-1 epoch (train + val through the same frozen backbone, as PhaseModule runs it)."""
    import torch

    from thaw.data import decode_sources, discover, eval_transform, loader
    from thaw.data.features import Views, compute
    from thaw.models import build_classifier

    for dataset in args.datasets:
        cfg = config(dataset, Path("unused"))
        sources = discover(cfg.data)
        names = sources.class_names
        model = build_classifier(cfg.model, len(names), names, cfg.data.image_size)
        pre = model.preprocessing
        start = time.perf_counter()
        decoded = decode_sources(sources, pre, 3, warn=lambda *_: None)
        decode_s = time.perf_counter() - start
        n_all = sum(len(d.images) for d in decoded.values())
        row = {"dataset": dataset, "images": n_all, "decode_s": round(decode_s, 1)}
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model.to(memory_format=fmt)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                for split, data in decoded.items():
                    views = Views(eval_transform(pre), 1, 0, decoded=data)
                    folder = Path(tmp) / split
                    folder.mkdir()
                    compute(model.backbone, views, data.keys, folder, batch_size=64)
                row[f"features_{layout}_s"] = round(time.perf_counter() - start, 1)
        model.to(memory_format=torch.channels_last).eval()
        start = time.perf_counter()
        with torch.no_grad():
            for split in ("train", "val"):
                for x, _ in loader(decoded[split], eval_transform(pre), cfg.data, shuffle=False):
                    model(x.contiguous(memory_format=torch.channels_last))
        online = time.perf_counter() - start
        n_epoch = len(decoded["train"].images) + len(decoded["val"].images)
        row["online_epoch_forward_s"] = round(online, 1)
        row["ms_per_image"] = {
            "features_contiguous": round(1000 * row["features_contiguous_s"] / n_all, 1),
            "features_channels_last": round(1000 * row["features_channels_last_s"] / n_all, 1),
            "online_epoch": round(1000 * online / n_epoch, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("speed", "accuracy", "two-phase", "cold"))
    p.add_argument("--datasets", nargs="+", default=None, choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    args.datasets = args.datasets or (["neu"] if args.mode in ("speed", "cold") else list(DATASETS))
    missing = [d for d in args.datasets if not Path(DATASETS[d]["data.path"]).exists()]
    if missing:
        sys.exit(f"skipped: {', '.join(missing)} absent under {SHARED}")
    from thaw.train.recipe import quiet_lightning
    from thaw.weights.install import install

    quiet_lightning()
    install("mobilenet_v2", log=lambda *_: None)
    out = Path(__file__).parent / "out" / f"cached-{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows: list = []
    modes = {"speed": speed, "accuracy": accuracy, "two-phase": two_phase, "cold": cold}
    modes[args.mode](args, out, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
